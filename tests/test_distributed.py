"""Multi-process training, adaptation and search: 2 CPU processes with gloo, started by torchrun.

Each launch is one subprocess with a timeout; the workers under tests/distributed/ write per-rank
JSON files that the tests compare. One thread per process (OMP_NUM_THREADS=1).
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from test_sparsevit_workflow import (
    IMAGE_SIZE,
    TINY_BACKBONE,
    fake_runner,
    load_tool,
    run_iterations,
    tiny_detection_cfg,
    tiny_segmentation_cfg,
    toy_budget,
    toy_metric,
    toy_settings,
)

from plugin.demo_data.synthetic import write_ade, write_coco
from plugin.engine.hooks import CHECKPOINT_SEED_KEY, SparsityAwareAdaptationHook
from plugin.models.backbones import SparseViTSwin
from plugin.search import EvolutionarySearch, MacsBudget, build_model
from plugin.utils.distributed import close_distributed, init_distributed, on_every_rank, on_main_rank

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / 'distributed'
# Generous: a launch takes 15-40 s on the shared 2-core machine; a hang would take the process group's 30 minutes.
LAUNCH_TIMEOUT_S = 240


# A script run as the venv's `torchrun --standalone --nproc-per-node 2 SCRIPT ...`.
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2']


def launch(command: list[str], extra_pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """``command`` from the repository root, one thread per process, the venv's python as ``PYTHON``."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), str(extra_pythonpath or ''),
                                                        os.environ.get('PYTHONPATH')])))
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def rank_results(out_dir: Path, pattern: str = 'rank{}.json') -> list[dict]:
    return [json.loads((out_dir / pattern.format(rank)).read_text()) for rank in range(2)]


def check_launch(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


# ---------------------------------------------------------------- without a process group

def test_rank_helpers_are_plain_calls_in_one_process_and_bad_launches_are_refused(monkeypatch):
    assert on_every_rank(lambda: 3) == 3
    assert on_main_rank(lambda: 'a') == 'a'
    with pytest.raises(KeyError, match='missing'):
        on_main_rank(lambda: {}['missing'])
    init_distributed('none')
    with pytest.raises(ValueError, match="launcher must be one of"):
        init_distributed('torchrun')
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match='pass --launcher pytorch'):
        init_distributed('none')


def test_search_refuses_a_budget_that_is_not_a_number():
    """A broken budget (e.g. a latency timer returning NaN) would otherwise pass every window check."""
    def broken(ratios) -> float:
        return float('nan') if ratios[0][0] == 0.3 else toy_budget(ratios)

    with pytest.raises(ValueError, match=r'budget returned nan for pruning ratios \[\[0.3'):
        EvolutionarySearch(toy_metric, broken, toy_settings(generations=1)).run()


def test_hook_keeps_its_seed_in_checkpoints_and_a_resumed_run_continues_the_sequence(tmp_path):
    backbone = SparseViTSwin(**TINY_BACKBONE)
    first = SparsityAwareAdaptationHook()
    first.before_run(fake_runner(backbone, seed=5))
    full = run_iterations(first, fake_runner(backbone), range(8))
    checkpoint = dict(meta=dict(seed=5))
    first.before_save_checkpoint(None, checkpoint)
    assert checkpoint['meta'][CHECKPOINT_SEED_KEY] == 5

    # A resumed run whose runner has another seed (randomness=dict(seed=None) draws a new one).
    resumed = SparsityAwareAdaptationHook()
    runner = fake_runner(backbone, seed=99)
    runner.logger = MMLogger.get_instance('test_distributed')
    resumed.before_run(runner)
    resumed.after_load_checkpoint(runner, copy.deepcopy(checkpoint))
    assert run_iterations(resumed, fake_runner(backbone), range(4, 8)) == full[4:]
    # A seed set in the config wins over the checkpoint's.
    configured = SparsityAwareAdaptationHook(seed=7)
    configured.before_run(runner)
    configured.after_load_checkpoint(runner, copy.deepcopy(checkpoint))
    assert configured.seed == 7


def test_close_distributed_ends_a_started_group_and_does_nothing_without_one(tmp_path):
    close_distributed()
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    close_distributed()
    assert not torch.distributed.is_initialized()


def test_train_tool_prepares_cpu_processes_and_names_bad_settings():
    tool = load_tool('train')
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/demo/mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py'))
    assert tool.training_script(cfg).parts[-4:] == ('mmdet', '.mim', 'tools', 'train.py')
    options = tool.cpu_distributed_options(cfg)
    assert options[0] == '--cfg-options'
    assert {'model_wrapper_cfg.type=CPUDistributedDataParallel', 'env_cfg.dist_cfg.backend=gloo',
            'model_wrapper_cfg.find_unused_parameters=True'} <= set(options)
    cfg.model_wrapper_cfg = dict(type='MMFullyShardedDataParallel')
    with pytest.raises(ValueError, match='supports MMDistributedDataParallel'):
        tool.cpu_distributed_options(cfg)
    cfg.default_scope = 'mmpretrain'
    with pytest.raises(ValueError, match="default_scope is 'mmpretrain'"):
        tool.training_script(cfg)


# ---------------------------------------------------------------- 2 processes

@pytest.mark.slow
def test_adaptation_applies_the_same_ratios_on_every_rank_and_resumes_the_sequence(tmp_path, monkeypatch):
    data_root = write_coco(tmp_path / 'data', seed=0, num_train=8, num_val=2, image_size=IMAGE_SIZE)
    cfg = tiny_detection_cfg(data_root, tmp_path / 'work')
    cfg.randomness = dict(seed=3, diff_rank_seed=True)
    cfg.train_cfg.val_interval = 100
    cfg.default_hooks.checkpoint.interval = 2
    # At 64x64 a drawn ratio often leaves a block of the one-window stages without windows.
    cfg.find_unused_parameters = True
    cfg.custom_imports.imports.append('recording_hook')
    cfg.custom_hooks.append(dict(type='RankRecordingHook', out_dir=str(tmp_path / 'out'), tag='train'))
    config = tmp_path / 'saa.py'
    cfg.dump(str(config))

    check_launch(launch([str(REPO_ROOT / 'tools/dist_train.sh'), str(config), '2'], extra_pythonpath=WORKERS))
    ranks = rank_results(tmp_path / 'out', 'train_rank{}.json')
    assert ranks[0]['runner_seed'] != ranks[1]['runner_seed']
    assert ranks[0]['adaptation_seed'] == ranks[1]['adaptation_seed'] == 3
    assert list(ranks[0]['ratios']) == ['0', '1', '2', '3'] and ranks[0]['ratios'] == ranks[1]['ratios']
    assert len({json.dumps(ratios) for ratios in ranks[0]['ratios'].values()}) == 4
    assert ranks[0]['parameters'] == ranks[1]['parameters']

    # One process resumes the run at iteration 2 with another runner seed: it continues the sequence.
    monkeypatch.syspath_prepend(str(WORKERS))
    resumed = Config.fromfile(str(config))
    resumed.update(work_dir=str(tmp_path / 'resumed'), resume=True, load_from=str(tmp_path / 'work/iter_2.pth'),
                   randomness=dict(seed=11))
    resumed.custom_hooks[-1].tag = 'resumed'
    Runner.from_cfg(resumed).train()
    after = json.loads((tmp_path / 'out/resumed_rank0.json').read_text())
    assert after['adaptation_seed'] == 3
    assert after['ratios'] == {key: ratios for key, ratios in ranks[0]['ratios'].items() if int(key) >= 2}


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
    """One launch of tests/distributed/worker.py (DDP gradients, then searches), and a one-process search of the
    same settings to compare with: the tiny Semantic FPN (with mmseg's SyncBN decode head) at its initial weights."""
    root = tmp_path_factory.mktemp('two_processes')
    data_root = write_ade(root / 'data', seed=0, num_train=1, num_val=5, image_size=IMAGE_SIZE)
    cfg = tiny_segmentation_cfg(data_root, root / 'work')
    cfg.model.decode_head.norm_cfg = dict(type='SyncBN', requires_grad=True)
    cfg.val_dataloader.batch_size = 1
    config = root / 'seg.py'
    cfg.dump(str(config))
    model = build_model(cfg, None, 'cpu')
    checkpoint = root / 'init.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)

    budget = MacsBudget(model.backbone, IMAGE_SIZE)
    dense, sparsest = budget(0.), budget(0.8)
    window = ['--min-budget', str(sparsest + 0.2 * (dense - sparsest)), '--max-budget', str(dense)]
    search = [str(config), str(checkpoint), '--constraint', 'macs', '--population', '4', '--generations', '2',
              '--topk', '2', '--mutation-prob', '0.5', '--num-val-images', '3', '--shape', *map(str, IMAGE_SIZE),
              '--device', 'cpu', '--no-progress']
    one = load_tool('search_sparsity').main(search + window + ['--work-dir', str(root / 'one')])
    lines = (root / 'one/search_log.jsonl').read_text().splitlines(keepends=True)
    (root / 'resumed').mkdir()
    (root / 'resumed/search_log.jsonl').write_text(''.join(lines[:len(lines) // 2]))
    # Validation image 1 of the 3 is in rank 1's shard only (the sampler deals them out in turn): without its
    # label map, rank 1 fails and rank 0 does not.
    labels = data_root / 'annotations/validation'
    missing = sorted(labels.glob('*.png'))[1]
    (labels.parent / 'validation_partial').mkdir()
    for label in sorted(labels.glob('*.png')):
        if label != missing:
            (labels.parent / 'validation_partial' / label.name).symlink_to(label)
    runs = dict(
        two=search + window + ['--work-dir', str(root / 'two')],
        resumed=search + window + ['--work-dir', str(root / 'resumed'), '--resume'],
        window=search + ['--min-budget', '0', '--max-budget', str(sparsest / 2), '--work-dir', str(root / 'w')],
        shard=search + window + ['--work-dir', str(root / 'shard'), '--cfg-options',
                                 'val_dataloader.dataset.data_prefix.seg_map_path=annotations/validation_partial'])
    check_launch(launch([*TORCHRUN, str(WORKERS / 'worker.py'), str(root / 'out'), json.dumps(runs)],
                        extra_pythonpath=Path(__file__).resolve().parent))
    return SimpleNamespace(root=root, one=one, ranks=rank_results(root / 'out'), missing=missing)


@pytest.mark.slow
def test_ddp_step_matches_one_process_with_checkpointing_and_learned_scorers(two_processes):
    for rank in two_processes.ranks:
        assert rank['world_size'] == 2
        cases = rank['gradients']
        assert set(cases) == {'sparsevit_with_cp', 'sparsevit_with_cp_find_unused', 'sparsevit_learned_scorer',
                              'dynamicvit'}
        for name, case in cases.items():
            assert case['max_abs_difference'] < 1e-5 and len(case['with_gradient']) > 100, name
        learned = cases['sparsevit_learned_scorer']
        assert {name.split('.window_scorer')[0] for name in learned['without_gradient']} == {'stages.1', 'stages.3'}
        # The scorers of the pruned stages learn from the task loss and the keep-ratio loss.
        assert any(name.startswith('stages.0.window_scorer') for name in learned['with_gradient'])
        assert any(name.startswith('score_predictor') for name in cases['dynamicvit']['with_gradient'])


@pytest.mark.slow
def test_every_rank_follows_rank_0s_budgets_and_metrics_and_only_rank_0_writes(two_processes):
    first, second = (rank['toy_search'] for rank in two_processes.ranks)
    assert first['budget_calls'] > 0 and second['budget_calls'] == 0
    assert first['records'] == second['records']
    # Rank 0's metric (rank 1's own is lower by 1) and budget (rank 1's own is 100 higher).
    assert all(r['metric'] == toy_metric(r['pruning_ratios']) for r in second['records'])
    assert all(r['budget'] == toy_budget(r['pruning_ratios']) for r in second['records'])
    assert first['wrote_log'] and not second['wrote_log']
    for rank in two_processes.ranks:
        assert rank['wrapped_sync_bn']['layers'] == ['Conv2d', '_BatchNormXd']


@pytest.mark.slow
def test_two_process_search_writes_the_one_process_log_and_resumes_it(two_processes):
    root = two_processes.root
    assert len({r['metric'] for r in two_processes.one.records}) > 1
    one_log = (root / 'one/search_log.jsonl').read_text()
    assert (root / 'two/search_log.jsonl').read_text() == one_log
    for name in ('pruning_ratios.py', 'candidates.csv'):
        assert (root / 'two' / name).read_text() == (root / 'one' / name).read_text()
    assert (root / 'resumed/search_log.jsonl').read_text() == one_log
    for rank in two_processes.ranks:
        assert rank['runs']['two']['status'] == rank['runs']['resumed']['status'] == 0
        # With a process group the search's model keeps the config's SyncBN layers.
        assert rank['sync_bn_layers'] > 0


@pytest.mark.slow
def test_a_failure_on_one_rank_ends_every_rank_with_its_error(two_processes):
    for rank, result in enumerate(two_processes.ranks):
        window, shard = result['runs']['window'], result['runs']['shard']
        assert window['status'] == 2 and 'no configuration can meet the budget window' in window['errors'][0]
        assert shard['status'] == 2, shard
        assert two_processes.missing.name in shard['errors'][0]
        if rank == 0:
            assert 'rank 1 failed: FileNotFoundError' in shard['errors'][0]
