"""Measure the latency lookup table of an EfficientFormer supernet's candidate blocks on this device.

    python tools/build_latency_lut.py --input-size 512 512 --out lut.json \
        --widths 48,64 96,128 224,320 448,512 --depths 4 4 12 6 --num-vit 4
    python tools/build_latency_lut.py --config configs/efficientformer/slimming/SUPERNET.py \
        --input-size 512 512 --out lut.json --device cuda

Every candidate (stem, downsampling, 4D and 3D MetaBlock, output norm) at each
width and feature-map size is run alone at batch 1: --warmup runs, then the
median of --repeats. On a shared CPU, --threads 1 avoids thread-synchronisation
stalls that would swamp small blocks. The JSON keeps the device name, the
thread count and the search space, which tools/slim.py reads.
"""
import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config
from tqdm import tqdm

from plugin.models.backbones.efficientformer_supernet import supernet_search_space
from plugin.slimming import build_latency_lut
from plugin.utils.cli import HelpFormatter, run_tool


def stage_widths(text: str) -> list[int]:
    """'48,64' -> [48, 64]."""
    try:
        widths = [int(w) for w in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'a stage\'s widths are comma-separated integers, got {text!r}')
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f'widths must be positive, got {text!r}')
    return widths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--config', help='a supernet config: its model.backbone gives widths, depths, num_vit')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'), required=True,
                        help='image size the sub-networks will run at')
    parser.add_argument('--out', required=True, help='the JSON lookup table to write')
    parser.add_argument('--widths', type=stage_widths, nargs='+', metavar='W1,W2,...',
                        default=[[32, 40, 48], [64, 80, 96], [160, 192, 224], [320, 384, 448]],
                        help='candidate widths per stage (default: the L1 supernet)')
    parser.add_argument('--depths', type=int, nargs='+', default=[3, 2, 6, 4], help='MetaPaths per stage')
    parser.add_argument('--num-vit', type=int, default=2, help='3D MetaPaths at the end of the last stage')
    parser.add_argument('--device', default='cpu', help='the device the table is for')
    parser.add_argument('--threads', type=int, help='CPU threads (torch.set_num_threads); default: torch\'s')
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls per entry')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls per entry; the median is kept')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config:
        backbone = Config.fromfile(args.config).model.backbone
        space = supernet_search_space(backbone.width_choices, backbone.depths, backbone.num_vit)
    else:
        space = supernet_search_space(args.widths, args.depths, args.num_vit)
    lut = build_latency_lut(space, args.input_size, args.device, args.warmup, args.repeats,
                            progress=lambda keys: tqdm(keys, desc='measuring', unit='block'))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(lut, f, indent=1)
    print(f'{len(lut["entries"])} entries measured on {lut["device"]} -> {args.out}')


if __name__ == '__main__':
    sys.exit(run_tool(main))
