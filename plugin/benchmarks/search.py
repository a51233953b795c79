"""Throughput of the evolutionary search (tools/search_sparsity.py) on 1 process and on N under torchrun.

Searches the demo detector (configs/demo/mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py) on its
synthetic validation images (written to --data-dir when missing) with the same seed and settings for
every process count: one plain process, then ``torchrun --nproc-per-node N ... --launcher pytorch``
(gloo and one thread per process on CPUs, OMP_NUM_THREADS=1; NCCL and one GPU per process on GPUs).
Reports candidates evaluated per minute of search as the tool times it (start-up and model building
left out), the speedup over one process, and whether the search log equals one process's.

    python tools/benchmark.py search                                   # 1 and 2 CPU processes
    python tools/benchmark.py search --nprocs 2 4 8 --device cuda      # a machine with 8 GPUs
    python tools/benchmark.py search --checkpoint work_dirs/demo/adapt_l2/iter_200.pth   # after `make demo`

Without --checkpoint the detector has its initial weights (the demo's adapted checkpoint is used when
present under the current folder, where `make demo` writes it): an untrained detector keeps up to 100
low-scoring boxes per image, so it is slower to score. The config and the search tool are the ones the
package ships (plugin/.mim/).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..utils.package_data import config_path, tool_path

CONFIG = config_path('demo/mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py')
SEARCH_TOOL = tool_path('search_sparsity.py')
DEMO_CHECKPOINT = Path('work_dirs/demo/adapt_l2/iter_200.pth')
TIMING = re.compile(r'Evaluated (\d+) candidates in ([\d.]+) s')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--nprocs', type=int, nargs='+', default=[2],
                        help='process counts run under torchrun, after one plain process')
    parser.add_argument('--checkpoint', default=None,
                        help=f'the detector\'s weights (default: {DEMO_CHECKPOINT} when present, else its '
                             f'initial weights)')
    parser.add_argument('--data-dir', default='data/demo', help='the demo data (written there when missing)')
    parser.add_argument('--num-val-images', type=int, default=50, help='validation images per candidate')
    parser.add_argument('--population', type=int, default=8)
    parser.add_argument('--generations', type=int, default=2)
    parser.add_argument('--min-budget', type=float, default=0.08, help='GMACs at 160x160 (dense: 0.18)')
    parser.add_argument('--max-budget', type=float, default=0.15, help='GMACs at 160x160')
    parser.add_argument('--timeout', type=int, default=1800, help='seconds one search may take')


def demo_checkpoint(args: argparse.Namespace, work_dir: Path) -> str:
    """The detector's weights: --checkpoint, the demo's adapted checkpoint, or the initial weights saved here."""
    if args.checkpoint:
        return args.checkpoint
    if DEMO_CHECKPOINT.is_file():
        return str(DEMO_CHECKPOINT)
    from mmengine.config import Config

    from ..search import build_model
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(CONFIG)), None, 'cpu')
    path = work_dir / 'initial_weights.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return str(path)


def search_command(args: argparse.Namespace, processes: int, checkpoint: str, data_root: Path,
                   work_dir: Path) -> list[str]:
    launcher = [] if processes == 1 else ['-m', 'torch.distributed.run', '--standalone',
                                          '--nproc-per-node', str(processes)]
    return [sys.executable, *launcher, str(SEARCH_TOOL), str(CONFIG), checkpoint, '--constraint', 'macs',
            '--min-budget', str(args.min_budget), '--max-budget', str(args.max_budget), '--shape', '160', '160',
            '--population', str(args.population), '--generations', str(args.generations), '--topk', '4',
            '--num-val-images', str(args.num_val_images), '--device', args.device.type, '--no-progress',
            '--work-dir', str(work_dir), '--launcher', 'none' if processes == 1 else 'pytorch',
            # 160-pixel images decode in no time; a loader worker per rank would be forked for every candidate.
            '--cfg-options', f'val_dataloader.dataset.data_root={data_root}/', 'val_dataloader.num_workers=0',
            f'val_evaluator.ann_file={data_root}/annotations/instances_val.json']


def run_search(command: list[str], timeout: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    timing = TIMING.search(done.stdout)
    if done.returncode or timing is None:
        raise RuntimeError(f'the search failed (exit status {done.returncode}):\n{done.stderr[-3000:]}')
    return dict(candidates=int(timing[1]), seconds=float(timing[2]), wall=wall)


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    from ..demo_data import make_demo_data

    if any(n < 2 for n in args.nprocs):
        raise ValueError(f'--nprocs are the torchrun process counts, each >= 2 (one process always runs first), '
                         f'got {args.nprocs}')
    if args.device.type == 'cuda' and max(args.nprocs) > torch.cuda.device_count():
        raise ValueError(f'{max(args.nprocs)} processes need as many GPUs; this machine has '
                         f'{torch.cuda.device_count()}')
    data_root = Path(args.data_dir).resolve() / 'coco'
    if not (data_root / 'annotations' / 'instances_val.json').is_file():
        make_demo_data(args.data_dir, tasks=('coco',))
    rows = []
    with tempfile.TemporaryDirectory(prefix='effidense-search-bench-') as scratch:
        checkpoint = demo_checkpoint(args, Path(scratch))
        each_on = '1 GPU' if args.device.type == 'cuda' else '1 CPU thread'
        reference: dict[str, float] | None = None
        reference_log = None
        for processes in [1, *args.nprocs]:
            work_dir = Path(scratch) / f'{processes}_processes'
            measured = run_search(search_command(args, processes, checkpoint, data_root, work_dir), args.timeout)
            log = (work_dir / 'search_log.jsonl').read_text()
            reference, reference_log = reference or measured, reference_log or log
            per_minute = 60 * measured['candidates'] / measured['seconds']
            rows.append({'processes': processes, 'each on': each_on, 'candidates': measured['candidates'],
                         'search s': measured['seconds'], 'candidates/min': per_minute,
                         'speedup': reference['seconds'] / measured['seconds'], 'wall s (with start-up)':
                         measured['wall'], 'same log as 1 process': 'yes' if log == reference_log else 'NO',
                         'images/candidate': args.num_val_images, 'weights': Path(checkpoint).name})
    return rows
