"""Sparse all the way: convolutions on kept tiles against dense ones, and Mask R-CNN's FPN + RPN head on the tiles
a SparseViT-Swin-T keeps against mmdet's, in latency and MACs (docs/sparse_all_the_way.md).

``--part layer`` times one layer of the FPN at the input size's stride-4 map (672: 168x168, tiles of 7)
at several kept fractions, computed on the gathered tiles and computed densely then masked (the
fallback, same result): where the tiles stop paying sets ``DENSE_FALLBACK_FRACTION``.
``--part fpn-rpn`` (default) runs SparseFPN and SparseRPNHead (random weights, Mask R-CNN's widths) on a
SparseViT-Swin-T's features and kept tiles at each pruning setting, against mmdet's FPN and RPNHead on the
same features.
Needs mmdet.
"""
import argparse
import functools
from collections.abc import Callable

import torch

from ..models.utils.records import KeptTiles
from ..utils import alternating_latency_ms, count_macs

FPN_IN_CHANNELS = [96, 192, 384, 768]
FPN_CHANNELS = 256
TILE = 7  # SparseViT-Swin-T's window


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--size', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'), help='input size')
    parser.add_argument('--fractions', type=float, nargs='+', default=[0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0],
                        help='kept fractions of the layer rows')
    parser.add_argument('--ratios', nargs='+', default=['cfg2', '0.6'],
                        help='pruning settings of the fpn+rpn rows: cfg1/cfg2/cfg3 or a uniform ratio')
    parser.add_argument('--part', choices=['fpn-rpn', 'layer'], default='fpn-rpn',
                        help='fpn-rpn: SparseFPN + SparseRPNHead against mmdet\'s; layer: one layer on tiles against '
                        'the dense fallback, per kept fraction')
    parser.add_argument('--batch', type=int, default=1, help='images per call of the layer rows')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (a shared machine: 1)')


def _random_tiles(feature_shape: tuple[int, int], fraction: float, batch: int, device: torch.device) -> KeptTiles:
    """``fraction`` of the tiles of each of ``batch`` images, drawn at random per image."""
    probe = KeptTiles(torch.zeros(1, 0, dtype=torch.long), TILE, feature_shape)
    kept = max(1, round(fraction * probe.num_tiles))
    generator = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(probe.num_tiles, generator=generator)[:kept] for _ in range(batch)])
    return KeptTiles(index.to(device), TILE, feature_shape)


def alternating_medians(runs: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of each named run, timed in one alternating loop (``alternating_latency_ms``)."""
    return dict(zip(runs, alternating_latency_ms(list(runs.values()), args.device, args.warmup, args.repeats)))


def layer_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    from mmcv.cnn import ConvModule

    from ..models.utils import tile_conv
    stride4 = (-(-args.size[0] // 4), -(-args.size[1] // 4))
    layers = {'3x3 output conv 256->256': (ConvModule(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1), FPN_CHANNELS),
              '1x1 lateral conv 96->256': (ConvModule(FPN_IN_CHANNELS[0], FPN_CHANNELS, 1), FPN_IN_CHANNELS[0])}
    rows = []
    for name, (layer, channels) in layers.items():
        layer = layer.to(args.device).eval()
        x = torch.randn(args.batch, channels, *stride4, device=args.device)
        for fraction in args.fractions:
            tiles = _random_tiles(stride4, fraction, args.batch, args.device)

            def on_kept(mode: str, tiles=tiles, layer=layer, x=x) -> torch.Tensor:
                with tile_conv.computed_as(mode):
                    return tile_conv.run_on_kept([layer], x, tiles).to_map(0.)
            medians = alternating_medians({'tiles': functools.partial(on_kept, 'tiles'),
                                           'dense+mask': functools.partial(on_kept, 'dense'),
                                           'dense conv': functools.partial(layer, x)}, args)
            rows.append({'layer': name, 'batch': args.batch, 'map': f'{stride4[0]}x{stride4[1]}',
                         'kept fraction': round(tiles.kept_fraction, 3),
                         **{f'{mode} ms': value for mode, value in medians.items()},
                         'tiles / dense+mask': medians['tiles'] / medians['dense+mask']})
    return rows


def fpn_rpn_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    from mmengine.hub import get_config
    from mmengine.registry import MODELS, init_default_scope

    from ..models.backbones import SparseViTSwin
    from ..models.dense_heads import sparse_rpn_head  # noqa: F401  (registers SparseRPNHead)
    from ..models.necks import sparse_fpn  # noqa: F401  (registers SparseFPN)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model_cfg = get_config('mmdet::_base_/models/mask-rcnn_r50_fpn.py').model
    neck_cfg = dict(model_cfg.neck, in_channels=FPN_IN_CHANNELS)
    head_cfg = dict(model_cfg.rpn_head, test_cfg=model_cfg.test_cfg.rpn)
    fpn, rpn = MODELS.build(neck_cfg), MODELS.build(head_cfg)
    sparse_fpn_module = MODELS.build(dict(neck_cfg, type='SparseFPN'))
    sparse_rpn = MODELS.build(dict(head_cfg, type='SparseRPNHead'))
    sparse_fpn_module.load_state_dict(fpn.state_dict())
    sparse_rpn.load_state_dict(rpn.state_dict())
    for module in (fpn, rpn, sparse_fpn_module, sparse_rpn):
        module.to(args.device).eval()
    backbone = SparseViTSwin(arch='tiny').to(args.device).eval()
    image = torch.randn(1, 3, *args.size, device=args.device)

    runs = {}
    for setting in ['0', *args.ratios]:
        backbone.set_pruning_ratios(setting if setting.startswith('cfg') else float(setting))
        with torch.no_grad():
            features, record = backbone.forward_with_record(image)
        tiles = record.kept_tiles(backbone.out_indices)
        if setting == '0':
            runs[setting] = (functools.partial(lambda f: rpn(fpn(f)), features), tiles)
        else:
            runs[setting] = (functools.partial(lambda f, t: sparse_rpn(sparse_fpn_module(f, t)), features, tiles),
                             tiles)
    medians = alternating_medians({setting: run_setting for setting, (run_setting, _) in runs.items()}, args)
    rows = []
    for setting, (run_setting, tiles) in runs.items():
        macs = count_macs(run_setting) / 1e9
        latency = medians[setting]
        rows.append({'pruning': 'dense (mmdet FPN + RPNHead)' if setting == '0' else setting,
                     'kept fractions': ' / '.join('-' if t is None else f'{t.kept_fraction:.2f}' for t in tiles),
                     'FPN+RPN GMACs': macs, 'FPN+RPN ms': latency})
    for row in rows:
        row['MACs ratio'] = rows[0]['FPN+RPN GMACs'] / row['FPN+RPN GMACs']
        row['speedup'] = rows[0]['FPN+RPN ms'] / row['FPN+RPN ms']
    return rows


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.set_num_threads(args.threads)
    return layer_rows(args) if args.part == 'layer' else fpn_rpn_rows(args)
