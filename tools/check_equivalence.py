"""SparseViTSwin's outputs on this device: ratio 0 against mmdet's Swin-T, CUDA-graph replay against eager.

    python tools/check_equivalence.py                      # GPU when present, else CPU
    python tools/check_equivalence.py --sizes 672x672 333x517 --batch 2

The tests check the same on the CPU; this runs it where the fast paths differ (the
memory-efficient attention kernel, CUDA graphs). fp32 with TF32 disabled, so that
both models compute in full precision. Exits with 1 when a difference exceeds --atol, with 2 on a bad input.
"""
import argparse
import sys
from collections.abc import Sequence

import torch

from plugin.models.backbones import SparseViTSwin
from plugin.utils import capture_cuda_graph
from plugin.utils.cli import HelpFormatter, image_size, run_tool
from plugin.utils.references import mmdet_swin_transformer

MIXED_RATIOS = [[0.3, 0.3], [0.2, 0.4], [0.1, 0.1, 0.5, 0.5, 0.6, 0.6], [0., 0.5]]


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def graph_replay(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``model(x)`` captured as a CUDA graph on a zero input, then replayed once on a copy of ``x``."""
    static_x = torch.zeros_like(x)
    with torch.no_grad():
        graph, static_out = capture_cuda_graph(lambda: model(static_x))
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    return list(static_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where to compare (the GPU when there is one)')
    parser.add_argument('--sizes', type=image_size, nargs='+', default=[(672, 672), (333, 517)], metavar='HxW',
                        help='input sizes')
    parser.add_argument('--batch', type=int, default=2, help='images per input')
    parser.add_argument('--atol', type=float, default=1e-5, help='largest difference accepted')
    args = parser.parse_args(argv)
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {args.device}, but torch sees no CUDA device here: use --device cpu')
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)

    reference_name, reference = mmdet_swin_transformer(drop_path_rate=0.)
    ours = SparseViTSwin(drop_path_rate=0.)
    if reference is None:
        print(f'{reference_name}: only the CUDA-graph check runs')
    else:
        ours.load_state_dict(reference.state_dict())
        reference.to(device).eval()
    ours.to(device).eval()

    worst = 0.
    for size in args.sizes:
        x = torch.randn(args.batch, 3, *size, device=device)
        with torch.no_grad():
            if reference is not None:
                ours.set_pruning_ratios(0.)
                diff = max_abs_diff(reference(x), ours(x))
                worst = max(worst, diff)
                print(f'{size[0]}x{size[1]}: ratio 0 vs {reference_name}: max |diff| {diff:.2e}')
            ours.set_pruning_ratios(MIXED_RATIOS)
            eager = ours(x)
        if device.type == 'cuda':
            diff = max_abs_diff(eager, graph_replay(ours, x))
            worst = max(worst, diff)
            print(f'{size[0]}x{size[1]}: mixed ratios, CUDA-graph replay vs eager: max |diff| {diff:.2e}')
    print(f'largest difference {worst:.2e} ({"within" if worst <= args.atol else "ABOVE"} --atol {args.atol:g})')
    return int(worst > args.atol)


if __name__ == '__main__':
    sys.exit(run_tool(main))
