"""SparseViT-Swin against dense Swin: backbone MACs, latency, speedup and its efficiency.

The dense reference is mmdet's ``SwinTransformer`` when mmdet is installed, else
our backbone at ratio 0. ``eff`` = measured speedup / MACs ratio (1.0 is the
limit that the MACs promise). Modes: ``eager``; ``graph`` replays a captured CUDA
graph (GPU only); ``compile`` runs ``torch.compile(fullgraph=True)``. Every backbone of a
dtype, mode and batch size is timed in one alternating loop, each pruning setting on its own copy.
"""
import argparse
import copy
from collections.abc import Callable

import torch

from ..models.backbones import SparseViTSwin
from ..models.utils.sparsity import PruningRatios, paper_pruning_ratios
from ..utils import alternating_latency_ms, capture_cuda_graph, count_macs
from ..utils.references import mmdet_swin_transformer

PAPER_NAMES = ('cfg1', 'cfg2', 'cfg3')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--size', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'))
    parser.add_argument('--batches', type=int, nargs='+', default=None,
                        help='batch sizes (default: 1 4 on CPU, 1 4 16 on GPU)')
    parser.add_argument('--dtypes', nargs='+', choices=sorted(DTYPES), default=['fp32'])
    parser.add_argument('--modes', nargs='+', choices=['eager', 'graph', 'compile'], default=['eager'])
    parser.add_argument('--ratios', nargs='+', type=ratio_setting, default=['0', '0.3', '0.6', '0.8', *PAPER_NAMES],
                        help=f'uniform ratios in [0, 1) and/or the paper\'s searched configurations {PAPER_NAMES}')
    parser.add_argument('--learned-ratios', nargs='*', type=ratio_setting, default=['0.6', 'cfg2'],
                        help="the same, for rows with scorer='learned' (the predictor's cost included)")


def make_runner(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """A no-argument callable that runs ``model`` on ``x`` in the given execution mode.

    Half-precision runs also enable autocast: mmdet's Swin adds its fp32 shift-mask
    buffer to fp16 scores, which only autocast reconciles; for models already in
    half precision it changes nothing.
    """
    autocast = torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32)

    def forward(module: Callable) -> object:
        with torch.no_grad(), autocast:
            return module(x)

    if mode == 'eager':
        return lambda: forward(model)
    if mode == 'compile':
        torch._dynamo.reset()
        # Ours must trace as one graph; the reference may break into several.
        compiled = torch.compile(model, fullgraph=isinstance(model, SparseViTSwin))
        return lambda: forward(compiled)
    if x.device.type != 'cuda':
        raise ValueError('mode "graph" (CUDA graph replay) needs a CUDA device')
    graph, _ = capture_cuda_graph(lambda: forward(model))
    return graph.replay


def ratio_setting(text: str) -> str:
    """A ``--ratios`` entry: a uniform ratio in [0, 1) or a name of the paper's configurations."""
    if text in PAPER_NAMES:
        return text
    try:
        ratio = float(text)
    except ValueError:
        ratio = None
    if ratio is None or not 0 <= ratio < 1:
        raise argparse.ArgumentTypeError(f'a ratio setting is a uniform ratio in [0, 1) or one of the paper\'s '
                                         f'configurations {PAPER_NAMES}, got {text!r}')
    return text


def variant_name(setting: str) -> str:
    return f'paper {setting}' if setting in PAPER_NAMES else f'uniform {setting}'


def resolve_ratios(setting: str) -> float | PruningRatios:
    return paper_pruning_ratios()[setting] if setting in PAPER_NAMES else float(setting)


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    device = args.device
    batches = args.batches or ([1, 4, 16] if device.type == 'cuda' else [1, 4])
    reference_name, reference = mmdet_swin_transformer(drop_path_rate=0.)
    if reference is None:
        print(f'{reference_name}: the dense reference is SparseViTSwin at ratio 0')
    ours = SparseViTSwin(drop_path_rate=0.)
    if reference is not None:
        ours.load_state_dict(reference.state_dict())
    variants = [(reference_name, reference)] if reference is not None else []
    variants += [(f'SparseViTSwin {variant_name(name)}', with_ratios(ours, name)) for name in args.ratios]
    if args.learned_ratios:
        # Random predictor weights: its cost, not its choices, is what the timing measures.
        learned = SparseViTSwin(drop_path_rate=0., scorer='learned')
        learned.load_state_dict(ours.state_dict(), strict=False)
        variants += [(f'SparseViTSwin learned scorer {variant_name(name)}', with_ratios(learned, name))
                     for name in args.learned_ratios]

    for _, model in variants:
        model.eval()  # mmdet's Swin's train() returns None: no chaining
    image = torch.randn(1, 3, *args.size)
    macs = {name: count_macs(model, image) for name, model in variants}
    dense_macs = macs[variants[0][0]]

    rows = []
    for dtype_name in args.dtypes:
        for mode in args.modes:
            for batch in batches:
                x = torch.randn(batch, 3, *args.size, device=device, dtype=DTYPES[dtype_name])
                runners = [make_runner(model.to(device=device, dtype=DTYPES[dtype_name]), x, mode)
                           for _, model in variants]
                # compile mode compiles each setting's forward once: more than dynamo's default of 8 per function.
                with torch._dynamo.config.patch(recompile_limit=max(8, 2 * len(runners))):
                    latencies = alternating_latency_ms(runners, device, args.warmup, args.repeats)
                for (name, _), latency in zip(variants, latencies):
                    speedup = latencies[0] / latency
                    macs_ratio = dense_macs / macs[name]
                    rows.append({'backbone': name, 'mode': mode, 'dtype': dtype_name, 'batch': batch,
                                 'GMACs/img': macs[name] / 1e9, 'latency ms': latency,
                                 'speedup': speedup, 'MACs ratio': macs_ratio, 'eff': speedup / macs_ratio})
    return rows


def with_ratios(model: SparseViTSwin, name: str) -> SparseViTSwin:
    """A copy of ``model`` at the pruning setting ``name``, so that the settings can be timed in alternation."""
    pruned = copy.deepcopy(model)
    pruned.set_pruning_ratios(resolve_ratios(name))
    return pruned
