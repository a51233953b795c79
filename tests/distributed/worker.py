"""Run by torchrun (2 CPU processes, gloo) from tests/test_distributed.py, one launch for several checks:
DDP gradients against one process (ddp_gradients.py), a toy search with rank-dependent numbers, the CPU
DDP wrapper on SyncBN, then tools/search_sparsity.py's main as
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
import torch.nn as nn
from ddp_gradients import compare_all
from mmengine.config import Config
from mmengine.dist import get_rank, get_world_size
from test_sparsevit_workflow import toy_budget, toy_metric, toy_settings

from plugin.engine import CPUDistributedDataParallel
from plugin.search import EvolutionarySearch, build_model
from plugin.utils.cli import run_tool
from plugin.utils.distributed import init_distributed

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'search_sparsity.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('search_sparsity', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rank_dependent_search(log_dir: Path) -> dict:
    """A toy search whose budget and metric differ by rank: every rank must follow rank 0's numbers,
    measure budgets on rank 0 only and leave the log to rank 0."""
    rank = get_rank()
    budget_calls = []

    def budget(ratios) -> float:
        budget_calls.append(ratios)
        return toy_budget(ratios) + 100 * rank

    def metric(ratios) -> float:
        return toy_metric(ratios) - rank

    log = log_dir / f'toy_rank{rank}.jsonl'
    result = EvolutionarySearch(metric, budget, toy_settings(generations=2, population_size=6),
                                log_path=log).run()
    return dict(budget_calls=len(budget_calls), records=result.records, wrote_log=log.exists())


def wrapped_sync_bn() -> dict:
    """CPUDistributedDataParallel on a model with SyncBN: reverted, and a training step runs on the CPU."""
    model = CPUDistributedDataParallel(module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    return dict(layers=[type(layer).__name__ for layer in model.module])


def main(out_dir: str, runs_json: str) -> None:
    torch.set_num_threads(1)
    init_distributed('pytorch', 'cpu')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    gradients = compare_all()
    toy = rank_dependent_search(Path(out_dir))
    sync_bn_wrapped = wrapped_sync_bn()
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
    Path(out_dir, f'rank{get_rank()}.json').write_text(json.dumps(dict(
        world_size=get_world_size(), gradients=gradients, toy_search=toy, wrapped_sync_bn=sync_bn_wrapped,
        runs=outcomes, sync_bn_layers=sync_bn)))


if __name__ == '__main__':
    main(*sys.argv[1:])
