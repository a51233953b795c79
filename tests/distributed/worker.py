"""Run by torchrun (2 CPU processes, gloo) from tests/test_distributed.py, one launch for several checks:
DDP gradients against one process (ddp_gradients.py), then tools/search_sparsity.py's main as
`torchrun ... tools/search_sparsity.py ... --launcher pytorch` runs it, once per entry of JSON_RUNS (a run's
name -> its argv without --launcher) in the same processes. Writes OUT/rank<r>.json.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed/worker.py OUT JSON_RUNS
"""
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import torch
from ddp_gradients import compare_all
from mmengine.config import Config
from mmengine.dist import get_rank, get_world_size

from plugin.search import build_model
from plugin.utils.cli import run_tool
from plugin.utils.distributed import init_distributed

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'search_sparsity.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('search_sparsity', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out_dir: str, runs_json: str) -> None:
    torch.set_num_threads(1)
    init_distributed('pytorch', 'cpu')
    gradients = compare_all()
    tool = load_tool()
    outcomes = {}
    for name, argv in json.loads(runs_json).items():
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = run_tool(tool.main, argv + ['--launcher', 'pytorch'])
        errors = [line for line in stderr.getvalue().splitlines() if ': error: ' in line]
        outcomes[name] = dict(status=status, errors=errors)
        if status:
            sys.stderr.write(stderr.getvalue())
    # A process group exists now: the search's model keeps its SyncBN layers.
    first_argv = next(iter(json.loads(runs_json).values()))
    model = build_model(Config.fromfile(first_argv[0]), first_argv[1], 'cpu')
    sync_bn = sum(type(layer).__name__ == 'SyncBatchNorm' for layer in model.modules())
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, f'rank{get_rank()}.json').write_text(json.dumps(dict(
        world_size=get_world_size(), gradients=gradients, runs=outcomes, sync_bn_layers=sync_bn)))


if __name__ == '__main__':
    main(*sys.argv[1:])
