"""Monocular 3D detectors of configs/mono3d/: backbone and whole-network latency, dense against pruned.

Each config is built as it is (no pretrained weights) and timed at batch 1 on one
KITTI-like input (default 384x1248: KITTI's 375x1242 padded to a multiple of 32).
"network" is backbone + FPN + head as ``mode='tensor'`` runs them, i.e. without
the box decoding and NMS, whose cost depends on the untrained scores. Speed-ups
and MACs ratios are against the dense SparseViT-Swin config of the same detector.
MACs leave out the heads' deformable convolution (an mmcv op that torch's counter
does not see). Needs mmdet3d; without it the suite prints a note and no rows.
"""
import argparse
import functools
import re
from pathlib import Path

import torch

from ..utils import alternating_latency_ms, count_macs
from ..utils.package_data import CONFIG_ROOT

CONFIG_DIR = CONFIG_ROOT / 'mono3d'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--size', type=int, nargs=2, default=(384, 1248), metavar=('H', 'W'),
                        help='input size (default: KITTI 375x1242 padded to 32)')
    parser.add_argument('--configs', nargs='+', default=None, metavar='NAME',
                        help='config file stems under configs/mono3d/ (default: all)')


def detector_name(stem: str) -> str:
    return stem.split('_', 1)[0]


def is_dense_sparsevit(stem: str) -> bool:
    return '_sparsevit-' in stem and re.search(r'_cfg\d+$', stem) is None


def build_detector(config_path: Path, device: torch.device) -> torch.nn.Module:
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(str(config_path))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.to(device).eval()
    return model


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    try:
        import mmdet3d  # noqa: F401
    except ImportError:
        print('mmdet3d is not installed: the mono3d suite has no rows')
        return []

    available = sorted(p.stem for p in CONFIG_DIR.glob('*.py'))
    unknown = sorted(set(args.configs or []) - set(available))
    if unknown:
        raise ValueError(f'unknown configs {unknown}; choose among {available}')
    chosen = set(args.configs or available)
    # The dense config of each chosen detector is the reference of its speed-ups, chosen or not.
    references = {detector_name(s): s for s in available if is_dense_sparsevit(s) and detector_name(s) in
                  {detector_name(c) for c in chosen}}
    stems = sorted(chosen | set(references.values()))
    image = torch.randn(1, 3, *args.size, device=args.device)

    measured, runs = {}, []
    for stem in stems:
        model = build_detector(CONFIG_DIR / f'{stem}.py', args.device)
        network = functools.partial(model, dict(imgs=image), mode='tensor')
        backbone = functools.partial(model.backbone, image)
        measured[stem] = dict(backbone_macs=count_macs(backbone), network_macs=count_macs(network))
        runs += [backbone, network]
    # Every backbone and network in one alternating loop: a change of the machine's speed hits all alike.
    latencies = alternating_latency_ms(runs, args.device, args.warmup, args.repeats)
    for index, result in enumerate(measured.values()):
        result.update(backbone_ms=latencies[2 * index], network_ms=latencies[2 * index + 1])

    rows = []
    for stem, result in measured.items():
        dense = measured.get(references.get(detector_name(stem)))
        row = {'config': stem, 'input': f'{args.size[0]}x{args.size[1]}',
               'backbone GMACs': result['backbone_macs'] / 1e9, 'backbone ms': result['backbone_ms'],
               'network GMACs': result['network_macs'] / 1e9, 'network ms': result['network_ms']}
        if dense is not None:
            row.update({'backbone speedup': dense['backbone_ms'] / result['backbone_ms'],
                        'backbone MACs ratio': dense['backbone_macs'] / result['backbone_macs'],
                        'network speedup': dense['network_ms'] / result['network_ms'],
                        'network MACs ratio': dense['network_macs'] / result['network_macs']})
        rows.append(row)
    return rows
