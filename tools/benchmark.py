"""Latency and MACs benchmarks of the project's backbones, printed as markdown tables.

    python tools/benchmark.py sparsevit                 # SparseViT-Swin-T vs mmdet's Swin-T, 672x672
    python tools/benchmark.py sparsevit --modes eager graph --dtypes fp32 fp16   # on a GPU
    python tools/benchmark.py efficientformer | dynamicvit | mono3d

Every ratio in a table (speedup, MACs ratio) comes from measurements of the same
run. Runs on the CPU, or on the GPU when one is present (``--device`` overrides).
"""
import argparse
import importlib
import platform
import sys
from pathlib import Path

import torch

SUITES_DIR = Path(__file__).resolve().parent / 'benchmark_suites'
REPO_ROOT = Path(__file__).resolve().parents[1]


def available_suites() -> list:
    return sorted(p.stem for p in SUITES_DIR.glob('*.py') if not p.stem.startswith('_'))


def format_cell(value) -> str:
    if isinstance(value, float):
        return f'{value:.3g}' if abs(value) < 100 else f'{value:.1f}'
    return '' if value is None else str(value)


def markdown_table(rows: list) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(format_cell(row.get(c)) for c in columns) + ' |' for row in rows]
    return '\n'.join(lines)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def main() -> None:
    sys.path[:0] = [str(REPO_ROOT), str(SUITES_DIR)]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('suite', choices=available_suites())
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10, help='timed runs; the median is reported')
    suite_name = next((a for a in sys.argv[1:] if not a.startswith('-')), None)
    if suite_name in available_suites():
        importlib.import_module(suite_name).add_arguments(parser)
    args = parser.parse_args()
    args.device = torch.device(args.device)
    suite = importlib.import_module(args.suite)

    print(f'# {args.suite} on {device_name(args.device)}, torch {torch.__version__}')
    print(markdown_table(suite.run(args)))


if __name__ == '__main__':
    main()
