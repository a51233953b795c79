"""MACs, and optionally latency, of the backbone and of the whole model of one or more configs.

    python tools/count_macs.py CONFIG [CONFIG ...] [--shape H W] [--pruning-ratios JSON] [--latency]
    python tools/count_macs.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py \\
        configs/sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg1.py --latency

MACs come from torch's FLOP counter, which sees every matrix product that runs,
attention (``scaled_dot_product_attention``) included, so a pruned SparseViT
backbone is charged only for the windows it keeps. "model" is the network
forward without post-processing (``mode='tensor'``, mmdet's get_flops
convention): for Mask R-CNN backbone, neck, RPN with its proposal NMS and the
RoI heads on the proposals (mask head on the first 100). The weights are random
(or --checkpoint), which sets how many proposals the RoI heads see. Ratios of
speed and MACs are relative to the first config; every number comes from this run, every latency
from one loop that times all configs' backbones and models in alternation.
"""
import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import MODELS, init_default_scope

from plugin.models.utils.checkpoint import load_model_checkpoint
from plugin.models.utils.sparsity import find_sparse_backbone, paper_pruning_ratios
from plugin.utils import alternating_latency_ms, count_macs, device_name, markdown_table
from plugin.utils.cli import HelpFormatter, pruning_ratios, run_tool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('configs', nargs='+', metavar='CONFIG', help='config files or package::path')
    parser.add_argument('--shape', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'), help='input size')
    parser.add_argument('--pruning-ratios', type=functools.partial(pruning_ratios, named=paper_pruning_ratios),
                        default=None, help='ratios for every SparseViT backbone instead of its config\'s: '
                        'JSON, e.g. 0.5 or [[0.3,0.3],[0,0],[0.1,0.1,0.2,0.2,0.2,0.2],[0,0]], or cfg1/cfg2/cfg3 '
                        '(the paper\'s)')
    parser.add_argument('--checkpoint', default=None, help='weights for every config (default: random)')
    parser.add_argument('--latency', action='store_true', help='also time backbone and model')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the latency measurement')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where latency is measured (MACs are counted on the CPU)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls first')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs; the median is reported')
    return parser.parse_args(argv)


def load_config(name: str) -> Config:
    return get_config(name) if '::' in name else Config.fromfile(name)


def dummy_data_samples(scope: str, shape: Sequence[int], batch: int) -> list | None:
    """Data samples with the meta-information a forward pass needs, or None where it needs none."""
    meta = dict(img_shape=tuple(shape), ori_shape=tuple(shape), pad_shape=tuple(shape),
                batch_input_shape=tuple(shape), scale_factor=(1., 1.))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta) for _ in range(batch)]
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta) for _ in range(batch)]
    return None


def build(cfg: Config, args: argparse.Namespace) -> nn.Module:
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        load_model_checkpoint(model, args.checkpoint)
    if args.pruning_ratios is not None:
        find_sparse_backbone(model, '--pruning-ratios').set_pruning_ratios(args.pruning_ratios)
    model.eval()
    return model


def measure(name: str, args: argparse.Namespace) -> tuple[dict[str, object], list[Callable[[], object]]]:
    """The config's row of MACs, and (with --latency) the callables running its backbone and whole model
    (the latter None where the task is not supported) on ``args.device`` at ``args.batch``."""
    cfg = load_config(name)
    model = build(cfg, args)
    scope = cfg.get('default_scope', 'mmdet')
    row: dict[str, object] = {'config': Path(name.split('::')[-1]).stem,
                              'pruning ratios': json.dumps(getattr(model.backbone, 'pruning_ratios', None))}

    def runners(batch: int, device: torch.device):
        """Callables running the backbone and the whole model (None where the task is not supported)."""
        inputs = torch.randn(batch, 3, *args.shape, device=device)
        samples = dummy_data_samples(scope, args.shape, batch)
        run_model = None if samples is None else (lambda: model(inputs, samples, mode='tensor'))
        return [(lambda: model.backbone(inputs)), run_model]

    backbone_fn, model_fn = runners(1, torch.device('cpu'))
    row['backbone GMACs'] = count_macs(backbone_fn) / 1e9
    row['model GMACs'] = count_macs(model_fn) / 1e9 if model_fn else None
    if not args.latency:
        return row, []
    device = torch.device(args.device)
    model.to(device)
    return row, runners(args.batch, device)


def time_in_alternation(rows: list[dict[str, object]], timed: list[list[Callable[[], object] | None]],
                        args: argparse.Namespace) -> None:
    """Backbone and model latency of every row, all timed in one alternating loop."""
    slots = [(row, part, fn) for row, fns in zip(rows, timed) for part, fn in zip(('backbone', 'model'), fns)]
    latencies = iter(alternating_latency_ms([fn for *_, fn in slots if fn is not None], torch.device(args.device),
                                            args.warmup, args.repeats))
    for row, part, fn in slots:
        row[f'{part} ms'] = next(latencies) if fn is not None else None


def add_ratios_to_first(rows: list[dict[str, object]]) -> None:
    """Speedup and MACs reduction of every row against the first."""
    first = rows[0]
    for row in rows:
        for part in ('backbone', 'model'):
            if row.get(f'{part} GMACs') and first.get(f'{part} GMACs'):
                row[f'{part} MACs ratio'] = first[f'{part} GMACs'] / row[f'{part} GMACs']
            if row.get(f'{part} ms') and first.get(f'{part} ms'):
                row[f'{part} speedup'] = first[f'{part} ms'] / row[f'{part} ms']


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    measured = [measure(name, args) for name in args.configs]
    rows = [row for row, _ in measured]
    if args.latency:
        time_in_alternation(rows, [fns for _, fns in measured], args)
    add_ratios_to_first(rows)
    where = f', latency at batch {args.batch} on {device_name(torch.device(args.device))}' if args.latency else ''
    print(f'# MACs at {args.shape[0]}x{args.shape[1]}{where}, torch {torch.__version__}')
    print(markdown_table(rows))
    return rows


if __name__ == '__main__':
    sys.exit(run_tool(main))
