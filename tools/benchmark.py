"""Latency and MACs benchmarks of the project's backbones, printed as markdown tables.

    python tools/benchmark.py sparsevit                 # SparseViT-Swin-T vs mmdet's Swin-T, 672x672
    python tools/benchmark.py sparsevit --modes eager graph --dtypes fp32 fp16   # on a GPU
    python tools/benchmark.py efficientformer | dynamicvit | mono3d
    python tools/benchmark.py onnxruntime --device cpu  # the same backbones exported, ONNX Runtime vs PyTorch

Every ratio in a table (speedup, MACs ratio) comes from measurements of the same
run. Runs on the CPU, or on the GPU when one is present (``--device`` overrides).
The suites live in ``plugin.benchmarks``; ``python tools/benchmark.py SUITE --help``
lists each one's options.
"""
import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from plugin.benchmarks import SUITES
from plugin.utils import device_name, markdown_table
from plugin.utils.cli import HelpFormatter, run_tool


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('suite', choices=SUITES, help='which benchmark to run')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where to run (the GPU when there is one)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls first')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs; the median is reported')
    argv = sys.argv[1:] if argv is None else list(argv)
    suite_name = next((a for a in argv if not a.startswith('-')), None)
    if suite_name in SUITES:
        importlib.import_module(f'plugin.benchmarks.{suite_name}').add_arguments(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    suite = importlib.import_module(f'plugin.benchmarks.{args.suite}')

    rows = suite.run(args)
    # After the run: a suite may set the thread count that device_name reports.
    print(f'# {args.suite} on {device_name(args.device)}, torch {torch.__version__}')
    print(markdown_table(rows))


if __name__ == '__main__':
    sys.exit(run_tool(main))
