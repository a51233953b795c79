"""DynamicViT against its dense counterpart: backbone MACs, latency and speedup.

The dense reference is the same DeiT backbone with pruning disabled (rho 1.0:
every token through every block, no predictors). DynamicViT rows share its ViT
weights and run the inference path: before blocks 3, 6 and 9 each image keeps
its top rho, rho^2, rho^3 of the token grid and only those run on. MACs and
latency cover the whole backbone, simple feature pyramid included.

    python tools/benchmark.py dynamicvit --warmup 1 --repeats 3
    python tools/benchmark.py dynamicvit --arch deit-b --sizes 512x512 --keep-ratios 0.9 0.7 0.5
"""
import argparse
import functools

import torch

from ..models.backbones import DynamicViT
from ..utils import alternating_latency_ms, count_macs
from ..utils.cli import image_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--arch', choices=['deit-s', 'deit-b'], default='deit-s', help='the ViT')
    parser.add_argument('--sizes', type=image_size, nargs='+', default=[(512, 512), (800, 1216)], metavar='HxW',
                        help='input sizes')
    parser.add_argument('--keep-ratios', type=float, nargs='+', default=[0.7, 0.5], metavar='RHO',
                        help='keep ratios rho, one DynamicViT row each')
    parser.add_argument('--batch', type=int, default=1, help='images per call')


def build_variants(arch: str, keep_ratios: list[float]) -> list[tuple[str, float, DynamicViT]]:
    """(name, rho, model) for the dense backbone and one DynamicViT per keep ratio, all with the same ViT weights."""
    torch.manual_seed(0)
    dense = DynamicViT(arch=arch, pruning_locs=(), drop_path_rate=0.)
    dense.init_weights()
    variants = [('dense (no predictor)', 1.0, dense)]
    for rho in keep_ratios:
        model = DynamicViT(arch=arch, keep_ratio=rho, drop_path_rate=0.)
        model.init_weights()
        model.load_state_dict(dense.state_dict(), strict=False)
        variants.append(('DynamicViT', rho, model))
    return variants


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    variants = build_variants(args.arch, args.keep_ratios)
    rows = []
    for _, _, model in variants:
        model.to(args.device).eval()
    for height, width in args.sizes:
        images = torch.randn(args.batch, 3, height, width, device=args.device)
        # Every model of an input size in one alternating loop: a change of the machine's speed hits all alike.
        latencies = alternating_latency_ms([functools.partial(model, images) for _, _, model in variants],
                                           args.device, args.warmup, args.repeats)
        dense_macs = dense_ms = None
        for (name, rho, model), latency in zip(variants, latencies):
            macs = count_macs(model, images) / args.batch
            dense_macs, dense_ms = dense_macs or macs, dense_ms or latency
            rows.append({'backbone': f'{args.arch} {name}', 'rho': rho, 'input': f'{height}x{width}',
                         'batch': args.batch, 'tokens kept after block 9': f'{rho**3:.0%}',
                         'GMACs/img': macs / 1e9, 'MACs ratio': dense_macs / macs,
                         'latency ms': latency, 'speedup': dense_ms / latency})
    return rows
