"""Slim a trained EfficientFormer supernet to a latency budget with a lookup table.

    python tools/slim.py work_dirs/supernet/iter_160000.pth --lut lut.json --budget-ms 20 --out slimmed.py
    python tools/slim.py none --lut lut.json --budget-ms 20 --out slimmed.py   # uniform importance

The supernet (a training checkpoint, or the backbone's weights) gives the
importance scores; 'none' scores every choice alike, so only latency decides.
Each step is printed with its predicted latency; the final EfficientFormer is
then built and timed on this device, and predicted and measured latency printed.
--out is a config fragment: ``model.backbone`` of the slimmed EfficientFormer.
"""
import argparse
import json
import sys
from collections.abc import Sequence

import torch

from plugin.models.backbones import EfficientFormerSupernet
from plugin.models.utils.checkpoint import backbone_state_dict, load_checked, read_checkpoint
from plugin.slimming import measure_config_latency, predict_latency, slim, write_config
from plugin.slimming.greedy import SubNetwork
from plugin.utils.cli import HelpFormatter, run_tool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('checkpoint', help="the trained supernet's checkpoint, or 'none'")
    parser.add_argument('--lut', required=True, help='table from tools/build_latency_lut.py')
    parser.add_argument('--budget-ms', type=float, required=True, help='latency budget of the slimmed network')
    parser.add_argument('--out', required=True, help='config fragment to write')
    parser.add_argument('--device', default='cpu', help='where to measure the final network')
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls before measuring the final network')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls; the median is reported')
    return parser.parse_args(argv)


def load_importance(checkpoint: str, space: dict) -> dict:
    """Importance scores of the supernet of ``space``, trained (``checkpoint``) or uniform ('none')."""
    supernet = EfficientFormerSupernet(**space)
    if checkpoint.lower() != 'none':
        load_checked(supernet, backbone_state_dict(read_checkpoint(checkpoint)), checkpoint,
                     hint='The lookup table\'s search space must be the supernet\'s '
                          '(tools/build_latency_lut.py --config)')
    return supernet.importance()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with open(args.lut) as f:
        lut = json.load(f)
    # Time the final network under the threads the table was measured with.
    torch.set_num_threads(lut['threads'])
    importance = load_importance(args.checkpoint, lut['space'])
    full = SubNetwork.full(lut['space'])
    print(f'lookup table: {args.lut} ({lut["device"]}, input {lut["input_size"]})')
    print(f'full supernet {full.config()}: predicted {predict_latency(lut, full.entries(lut["input_size"])):.3f} ms')
    net, steps = slim(lut, importance, args.budget_ms)
    for i, step in enumerate(steps, 1):
        print(f'step {i:>2}: {step.describe()}')
    config = net.config()
    predicted = predict_latency(lut, net.entries(lut['input_size']))
    measured = measure_config_latency(config, lut['input_size'], args.device, args.warmup, args.repeats)
    write_config(args.out, config, [
        f'EfficientFormer slimmed by tools/slim.py to a {args.budget_ms} ms budget at input {lut["input_size"]}',
        f'on {lut["device"]}: predicted {predicted:.3f} ms, measured {measured:.3f} ms ({args.device}).'])
    print(f'slimmed {config}')
    print(f'predicted {predicted:.3f} ms, measured {measured:.3f} ms on {args.device} '
          f'({(measured - predicted) / predicted:+.1%}) -> {args.out}')


if __name__ == '__main__':
    sys.exit(run_tool(main))
