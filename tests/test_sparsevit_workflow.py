"""SparseViT's workflow: sparsity-aware adaptation hook, evolutionary search, MACs counting, window pictures."""
import copy
import csv
import importlib.util
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from recorded_loops import RecordedLoops
from tiny_configs import IMAGE_SIZE, REPO_ROOT, TINY_BACKBONE, TRAIN_ITERS, tiny_detection_cfg, tiny_segmentation_cfg

from plugin.demo_data.synthetic import write_ade, write_coco
from plugin.engine import SparsityAwareAdaptationHook
from plugin.models.backbones import SparseViTSwin
from plugin.models.utils.sparsity import RATIO_CHOICES, normalize_pruning_ratios
from plugin.search import (
    EvolutionarySearch,
    LatencyBudget,
    MacsBudget,
    SearchSettings,
    SparsitySearchSpace,
    SubsetEvaluator,
    build_model,
    pareto_front,
)
from plugin.utils import count_macs
from plugin.visualization import kept_window_masks


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """Toy-sized tensors gain nothing from intra-op threads and lose much when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_backbone(**overrides) -> SparseViTSwin:
    torch.manual_seed(0)
    return SparseViTSwin(**{**TINY_BACKBONE, **overrides}).eval()


# ---------------------------------------------------------------- hook

def fake_runner(backbone: nn.Module, seed: int = 3) -> SimpleNamespace:
    model = nn.Module()
    model.backbone = backbone
    return SimpleNamespace(model=model, iter=0, seed=seed)


def run_iterations(hook: SparsityAwareAdaptationHook, runner: SimpleNamespace, iterations) -> list:
    backbone = getattr(runner.model, 'module', runner.model).backbone
    sampled = []
    for iteration in iterations:
        runner.iter = iteration
        hook.before_train_iter(runner, iteration)
        sampled.append(copy.deepcopy(backbone.pruning_ratios))
    return sampled


def test_hook_applies_a_new_valid_configuration_every_iteration():
    backbone = tiny_backbone(depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8))
    runner = fake_runner(backbone)
    hook = SparsityAwareAdaptationHook(seed=7)
    hook.before_run(runner)
    sampled = run_iterations(hook, runner, range(300))

    for ratios in sampled:
        assert normalize_pruning_ratios(ratios, backbone.depths) == ratios
        for stage in ratios:
            assert stage == sorted(stage) and set(stage) <= set(RATIO_CHOICES)
            assert all(stage[b] == stage[b + 1] for b in range(0, len(stage), 2))
    assert all(a != b for a, b in zip(sampled, sampled[1:]))
    # Every choice turns up in every stage: the whole space is sampled.
    for stage in range(4):
        assert {ratio for r in sampled for ratio in r[stage]} == set(RATIO_CHOICES)
    # The third stage's three pair ratios are drawn independently, then sorted.
    assert len({tuple(r[2][0::2]) for r in sampled}) > 100


def test_hook_sequence_depends_only_on_seed_and_iteration():
    backbone = tiny_backbone()
    first = SparsityAwareAdaptationHook(seed=11)
    first.before_run(fake_runner(backbone))
    full = run_iterations(first, fake_runner(backbone), range(20))
    resumed = SparsityAwareAdaptationHook(seed=11)
    resumed.before_run(fake_runner(backbone))
    assert run_iterations(resumed, fake_runner(backbone), range(10, 20)) == full[10:]
    other = SparsityAwareAdaptationHook(seed=12)
    other.before_run(fake_runner(backbone))
    assert run_iterations(other, fake_runner(backbone), range(20)) != full
    # Without a seed the runner's seed is used.
    from_runner = SparsityAwareAdaptationHook()
    from_runner.before_run(fake_runner(backbone, seed=11))
    assert run_iterations(from_runner, fake_runner(backbone), range(20)) == full


def test_hook_uses_the_given_choices_and_restores_fixed_ratios_for_validation():
    backbone = tiny_backbone()
    runner = fake_runner(backbone)
    eval_ratios = [0.0, 0.0, [0.2, 0.5], 0.0]
    hook = SparsityAwareAdaptationHook(choices=(0.0, 0.5), eval_pruning_ratios=eval_ratios, seed=0)
    hook.before_run(runner)
    sampled = run_iterations(hook, runner, range(50))
    assert {r for ratios in sampled for stage in ratios for r in stage} == {0.0, 0.5}
    expected = normalize_pruning_ratios(eval_ratios, backbone.depths)
    hook.before_val_epoch(runner)
    assert backbone.pruning_ratios == expected
    run_iterations(hook, runner, [50])
    hook.after_train(runner)
    assert backbone.pruning_ratios == expected


def test_hook_unwraps_model_wrappers_and_rejects_bad_settings():
    backbone = tiny_backbone()
    runner = fake_runner(backbone)
    runner.model = nn.DataParallel(runner.model)
    hook = SparsityAwareAdaptationHook(seed=0)
    hook.before_run(runner)
    first, second = run_iterations(hook, runner, [0, 1])
    assert first != second and backbone.pruning_ratios == second
    hook.before_val_epoch(runner)
    assert backbone.pruning_ratios == normalize_pruning_ratios(0., backbone.depths)

    plain = nn.Module()
    plain.backbone = nn.Linear(2, 2)
    with pytest.raises(TypeError, match='set_pruning_ratios'):
        hook.before_run(SimpleNamespace(model=plain, iter=0, seed=0))
    with pytest.raises(TypeError, match='backbone'):
        hook.before_run(SimpleNamespace(model=nn.Linear(2, 2), iter=0, seed=0))
    with pytest.raises(ValueError, match='choices'):
        SparsityAwareAdaptationHook(choices=(0.0, 1.0))
    with pytest.raises(ValueError, match='choices'):
        SparsityAwareAdaptationHook(choices=())
    with pytest.raises(ValueError, match='stages'):
        SparsityAwareAdaptationHook(eval_pruning_ratios=[0.1, 0.2]).before_run(fake_runner(backbone))


# ---------------------------------------------------------------- search (algorithm)

STAGE_COST = (4., 2., 3., 1.)
STAGE_SENSITIVITY = (0.5, 3.0, 1.0, 4.0)
DEPTHS = (2, 2, 6, 2)


def toy_budget(ratios) -> float:
    return sum(STAGE_COST[s] * (1 - r) for s, stage in enumerate(ratios) for r in stage)


def toy_metric(ratios) -> float:
    return -sum(STAGE_SENSITIVITY[s] * r * r for s, stage in enumerate(ratios) for r in stage)


class CountingMetric:
    def __init__(self):
        self.calls = []

    def __call__(self, ratios) -> float:
        self.calls.append(copy.deepcopy(ratios))
        return toy_metric(ratios)


def toy_settings(**overrides) -> SearchSettings:
    return SearchSettings(**{**dict(depths=DEPTHS, min_budget=14., max_budget=17., population_size=20,
                                    generations=6, topk=5, seed=0), **overrides})


def test_search_space_operators():
    space = SparsitySearchSpace(DEPTHS)
    rng = random.Random(0)
    for _ in range(200):
        first, second = space.sample(rng), space.sample(rng)
        assert space.to_genes(space.to_pruning_ratios(first)) == first
        assert space.mutate(first, rng, 0.0) == first
        for genes in (space.mutate(first, rng, 0.5), space.crossover(first, second, rng)):
            assert all(list(stage) == sorted(stage) and set(stage) <= set(RATIO_CHOICES) for stage in genes)
        child = space.crossover(first, second, rng)
        for stage, (a, b) in enumerate(zip(first, second)):
            assert set(child[stage]) <= set(a) | set(b)
    changed = sum(space.mutate(first, rng, 1.0) != first for _ in range(50))
    assert changed > 40
    with pytest.raises(ValueError, match='block pair'):
        space.to_genes([[0.1, 0.2], 0., 0., 0.])
    with pytest.raises(ValueError, match='choices'):
        space.to_genes([0.15, 0., 0., 0.])


def test_search_respects_budget_never_repeats_and_returns_best(tmp_path):
    metric = CountingMetric()
    settings = toy_settings()
    # Late generations run out of new children near the converged parents, and say so.
    with pytest.warns(UserWarning, match='no new candidate'):
        result = EvolutionarySearch(metric, toy_budget, settings, log_path=tmp_path / 'log.jsonl').run()

    generations = [r['generation'] for r in result.records]
    assert generations == sorted(generations) and set(generations) == set(range(settings.generations))
    assert generations.count(0) == settings.population_size
    assert all(generations.count(g) <= settings.population_size for g in set(generations))
    assert all(14. <= toy_budget(r['pruning_ratios']) <= 17. for r in result.records)
    assert all(r['budget'] == toy_budget(r['pruning_ratios']) for r in result.records)
    keys = [json.dumps(call) for call in metric.calls]
    assert len(keys) == len(set(keys)) == len(result.records)
    assert result.best['metric'] == max(toy_metric(r['pruning_ratios']) for r in result.records)
    # Evolution improves on the random generation.
    first_generation = max(r['metric'] for r in result.records if r['generation'] == 0)
    assert result.best['metric'] > first_generation + 0.5
    second = [r['origin'] for r in result.records if r['generation'] == 1]
    assert second.count('mutation') == second.count('crossover') == settings.population_size // 2
    logged = [json.loads(line) for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert logged[0]['event'] == 'settings'
    assert [r for r in logged if r['event'] == 'evaluated'] == result.records
    rejected = [r for r in logged if r['event'] == 'rejected']
    assert rejected and all(not 14. <= r['budget'] <= 17. for r in rejected)


@pytest.mark.filterwarnings('ignore:generation')
@pytest.mark.parametrize('cut', [1, 37, 90])
def test_resumed_search_gives_the_same_result(tmp_path, cut):
    full_log, resumed_log = tmp_path / 'full.jsonl', tmp_path / 'resumed.jsonl'
    full = EvolutionarySearch(CountingMetric(), toy_budget, toy_settings(), log_path=full_log).run()
    lines = full_log.read_text().splitlines(keepends=True)
    # An interrupted run: the first `cut` lines and half of the next one.
    resumed_log.write_text(''.join(lines[:cut]) + lines[cut][:len(lines[cut]) // 2])
    already = sum(json.loads(line)['event'] == 'evaluated' for line in lines[1:cut])

    metric = CountingMetric()
    with pytest.warns(UserWarning, match='incomplete last line'):
        resumed = EvolutionarySearch(metric, toy_budget, toy_settings(), log_path=resumed_log, resume=True).run()
    assert resumed.best == full.best
    assert resumed.records == full.records
    assert len(metric.calls) == len(full.records) - already
    assert resumed_log.read_text() == full_log.read_text()


def test_search_log_is_protected_and_checked(tmp_path):
    log = tmp_path / 'log.jsonl'
    EvolutionarySearch(toy_metric, toy_budget, toy_settings(generations=1), log_path=log).run()
    with pytest.raises(FileExistsError, match='resume'):
        EvolutionarySearch(toy_metric, toy_budget, toy_settings(generations=1), log_path=log)
    with pytest.raises(ValueError, match='seed'):
        EvolutionarySearch(toy_metric, toy_budget, toy_settings(generations=1, seed=1), log_path=log, resume=True)


def test_search_reports_an_infeasible_window_and_bad_settings():
    dense, sparsest = toy_budget([[0.] * d for d in DEPTHS]), toy_budget([[0.8] * d for d in DEPTHS])
    expected = f'all ratios 0 cost {dense:.4g} and all ratios 0.8 cost {sparsest:.4g}'
    with pytest.raises(RuntimeError, match=expected):
        EvolutionarySearch(toy_metric, toy_budget, toy_settings(min_budget=30., max_budget=40.,
                                                                max_attempts=50)).run()
    with pytest.raises(ValueError, match='topk'):
        toy_settings(topk=1)
    with pytest.raises(ValueError, match='min_budget'):
        toy_settings(min_budget=5., max_budget=4.)


def test_search_refuses_a_window_outside_every_configuration_at_once():
    dense, sparsest = toy_budget([[0.] * d for d in DEPTHS]), toy_budget([[0.8] * d for d in DEPTHS])
    budget = CountingMetric()  # counts the budget's calls
    budget_fn = lambda ratios: (budget(ratios), toy_budget(ratios))[1]  # noqa: E731
    for window in ((0.5 * sparsest, 0.9 * sparsest), (1.1 * dense, 1.2 * dense)):
        budget.calls.clear()
        with pytest.raises(ValueError, match=rf'no configuration can meet the budget window.*all ratios 0 cost '
                                             rf'{dense:.4g} and all ratios 0.8 cost {sparsest:.4g}'):
            EvolutionarySearch(toy_metric, budget_fn, toy_settings(min_budget=window[0], max_budget=window[1])).run()
        # Only the two extremes were measured: no proposal was tried.
        assert len(budget.calls) == 2


def test_pareto_front():
    records = [dict(budget=b, metric=m) for b, m in [(3, 0.5), (1, 0.1), (2, 0.4), (2, 0.2), (4, 0.45), (5, 0.9)]]
    front = pareto_front(records)
    assert [(r['budget'], r['metric']) for r in front] == [(1, 0.1), (2, 0.4), (3, 0.5), (5, 0.9)]
    for record in records:
        dominated = any(o['budget'] <= record['budget'] and o['metric'] >= record['metric'] and o is not record
                        for o in front)
        assert dominated != (record in front)


# ---------------------------------------------------------------- MACs

def hand_count_macs(height: int, width: int, ratios, embed_dims=16, depths=(2, 2, 2, 2), window_size=4,
                    mlp_ratio=4, patch_size=4) -> int:
    """Multiply-accumulates of SparseViTSwin's matrix products, block by block."""
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    channels = embed_dims
    macs = rows * cols * channels * 3 * patch_size**2  # patch embedding convolution
    tokens = window_size**2
    for stage, depth in enumerate(depths):
        windows = math.ceil(rows / window_size) * math.ceil(cols / window_size)
        per_window = (tokens * channels * 3 * channels  # qkv
                      + 2 * tokens * tokens * channels  # q @ k^T and attn @ v, over all heads
                      + tokens * channels * channels  # output projection
                      + 2 * tokens * channels * mlp_ratio * channels)  # FFN
        for block in range(depth):
            macs += math.floor(round(windows * (1 - ratios[stage][block]), 6)) * per_window
        if stage < len(depths) - 1:
            rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
            macs += rows * cols * 4 * channels * 2 * channels  # patch merging's linear reduction
            channels *= 2
    return macs


RATIO_CASES = [0., 0.5, [[0.3, 0.3], [0.5, 0.8], [0.1, 0.7], [0.0, 0.4]], [0.8, 0.0, 0.0, 0.7]]


@pytest.mark.parametrize('size', [(64, 64), (75, 110)])
def test_count_macs_matches_hand_count(size):
    backbone = tiny_backbone()
    image = torch.randn(1, 3, *size)
    counted = []
    for ratios in RATIO_CASES:
        backbone.set_pruning_ratios(ratios)
        counted.append(count_macs(backbone, image))
        assert counted[-1] == hand_count_macs(*size, backbone.pruning_ratios)
    assert counted[0] > counted[1] and counted[0] > counted[2]
    budget = MacsBudget(backbone, size)
    assert budget(normalize_pruning_ratios(0.5, backbone.depths)) == counted[1] / 1e9


def test_latency_budget_times_the_backbone_at_the_given_ratios():
    backbone = tiny_backbone()
    shapes = []
    backbone.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    budget = LatencyBudget(backbone, (40, 56), batch_size=2, warmup=1, repeats=3)
    ratios = normalize_pruning_ratios([0.5, 0.0, 0.3, 0.0], backbone.depths)
    assert budget(ratios) > 0
    assert backbone.pruning_ratios == ratios and shapes == [(2, 3, 40, 56)] * 4
    assert budget.name == 'ms@2x40x56'
    with pytest.raises(ValueError, match='batch_size'):
        LatencyBudget(backbone, (40, 56), batch_size=0)


# ---------------------------------------------------------------- window pictures

def test_kept_window_masks_cover_exactly_the_kept_windows():
    backbone = tiny_backbone()
    ratios = [[0.3, 0.3], [0.5, 0.5], [0.0, 0.6], [0.0, 0.0]]
    backbone.set_pruning_ratios(ratios)
    height, width = 75, 110
    with torch.no_grad():
        _, record = backbone.forward_with_record(torch.randn(2, 3, height, width))
    panels = kept_window_masks(record, image_index=1)

    for stage, panel in enumerate(panels):
        stride = 4 * 2**stage
        rows, cols = record.stages[stage].hw_shape
        window_cols = math.ceil(cols / 4)
        assert (panel.block, panel.ratio) == (0, ratios[stage][0])  # the stage's only unshifted block
        assert panel.total == math.ceil(rows / 4) * window_cols
        assert panel.kept == math.floor(round(panel.total * (1 - ratios[stage][0]), 6))
        expected = np.zeros((rows * stride, cols * stride), dtype=bool)
        kept = record.stages[stage].blocks[0].kept
        windows = range(panel.total) if kept is None else kept[1].tolist()
        for window in windows:
            top, left = (window // window_cols) * 4 * stride, (window % window_cols) * 4 * stride
            expected[top:top + 4 * stride, left:left + 4 * stride] = True
        np.testing.assert_array_equal(panel.mask, expected[:height, :width])
        assert panel.window_pixels == 4 * stride


# ---------------------------------------------------------------- end to end through the runners

class RecordingHook(Hook):
    """What the backbone ran with in every training and validation iteration, and the losses."""

    def __init__(self):
        self.train_ratios, self.val_ratios, self.losses = [], [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.train_ratios.append(copy.deepcopy(runner.model.backbone.pruning_ratios))
        self.losses.append(outputs['loss'].item())

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.val_ratios.append(copy.deepcopy(runner.model.backbone.pruning_ratios))


def adapt(cfg: Config) -> tuple:
    """Run sparsity-aware adaptation; returns the runner, what it recorded and the checkpoint."""
    runner = Runner.from_cfg(cfg)
    recorder = RecordingHook()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    return runner, recorder, Path(cfg.work_dir) / f'iter_{TRAIN_ITERS}.pth'


def check_adaptation(runner: Runner, recorder: RecordingHook) -> None:
    dense = normalize_pruning_ratios(0., TINY_BACKBONE['depths'])
    assert len(recorder.train_ratios) == TRAIN_ITERS
    assert all(a != b for a, b in zip(recorder.train_ratios, recorder.train_ratios[1:]))
    for ratios in recorder.train_ratios:
        assert all(stage == sorted(stage) and set(stage) <= set(RATIO_CHOICES) for stage in ratios)
    assert recorder.val_ratios and all(r == dense for r in recorder.val_ratios)
    assert runner.model.backbone.pruning_ratios == dense
    assert all(math.isfinite(loss) for loss in recorder.losses)


@pytest.fixture(scope='module')
def adapted_detector(tmp_path_factory):
    root = tmp_path_factory.mktemp('saa_det')
    data_root = write_coco(root / 'data', seed=0, num_train=6, num_val=4, image_size=IMAGE_SIZE)
    cfg = tiny_detection_cfg(data_root, root / 'work')
    runner, recorder, checkpoint = adapt(cfg)
    config_path = root / 'tiny_saa_det.py'
    cfg.dump(str(config_path))
    return SimpleNamespace(runner=runner, recorder=recorder, checkpoint=checkpoint, config=config_path,
                           image=next((data_root / 'val').glob('*.jpg')))


@pytest.fixture(scope='module')
def adapted_segmentor(tmp_path_factory):
    root = tmp_path_factory.mktemp('saa_seg')
    data_root = write_ade(root / 'data', seed=0, num_train=6, num_val=4, image_size=IMAGE_SIZE)
    cfg = tiny_segmentation_cfg(data_root, root / 'work')
    runner, recorder, checkpoint = adapt(cfg)
    config_path = root / 'tiny_saa_seg.py'
    cfg.dump(str(config_path))
    return SimpleNamespace(runner=runner, recorder=recorder, checkpoint=checkpoint, config=config_path, root=root)


@pytest.mark.slow
def test_adaptation_trains_mask_rcnn_under_changing_sparsity(adapted_detector):
    check_adaptation(adapted_detector.runner, adapted_detector.recorder)
    assert adapted_detector.checkpoint.is_file()


@pytest.mark.slow
def test_adaptation_trains_semantic_fpn_under_changing_sparsity(adapted_segmentor):
    check_adaptation(adapted_segmentor.runner, adapted_segmentor.recorder)


@pytest.mark.slow
def test_search_tool_end_to_end_through_the_evaluator(adapted_segmentor):
    root = adapted_segmentor.root
    cfg = Config.fromfile(str(adapted_segmentor.config))
    model = build_model(cfg, str(adapted_segmentor.checkpoint), 'cpu')
    budget = MacsBudget(model.backbone, IMAGE_SIZE)
    dense = budget(normalize_pruning_ratios(0., TINY_BACKBONE['depths']))
    sparsest = budget(normalize_pruning_ratios(0.8, TINY_BACKBONE['depths']))
    low, high = sparsest + 0.2 * (dense - sparsest), dense
    work_dir = root / 'search'
    search_tool = load_tool('search_sparsity')
    argv = [str(adapted_segmentor.config), str(adapted_segmentor.checkpoint), '--constraint', 'macs',
            '--min', str(low), '--max', str(high), '--population', '4', '--generations', '3', '--topk', '3',
            '--mutation-prob', '0.5', '--num-val-images', '3', '--shape', *map(str, IMAGE_SIZE), '--device', 'cpu',
            '--no-progress', '--work-dir', str(work_dir)]
    result = search_tool.main(argv)

    generations = [r['generation'] for r in result.records]
    assert generations.count(0) == 4 and set(generations) == {0, 1, 2} and len(generations) <= 12
    assert all(low <= budget(r['pruning_ratios']) <= high for r in result.records)
    assert len({json.dumps(r['pruning_ratios']) for r in result.records}) == len(result.records)
    assert len({r['metric'] for r in result.records}) > 1
    assert result.best['metric'] == max(r['metric'] for r in result.records)
    evaluator = SubsetEvaluator(cfg, model, num_images=3)
    assert evaluator(result.best['pruning_ratios']) == result.best['metric']
    assert evaluator.metric == 'mIoU'

    fragment = Config.fromfile(str(work_dir / 'pruning_ratios.py'))
    assert fragment.pruning_ratios == result.best['pruning_ratios']
    with open(work_dir / 'candidates.csv') as table:
        rows = list(csv.DictReader(table))
    assert [json.loads(row['pruning_ratios']) for row in rows] == [r['pruning_ratios'] for r in result.records]
    assert sum(int(row['pareto']) for row in rows) == len(result.pareto)
    assert (work_dir / 'search.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    log = work_dir / 'search_log.jsonl'
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(''.join(lines[:len(lines) // 2]))
    resumed = search_tool.main(argv + ['--resume'])
    assert resumed.best == result.best and resumed.records == result.records
    assert log.read_text() == ''.join(lines)


class GroundTruthDetector(nn.Module):
    """Predicts exactly the ground truth of every image it runs: the true AP of any set of images is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_backbone()

    def val_step(self, data_batch: dict) -> list:
        from mmengine.structures import InstanceData
        samples = data_batch['data_samples']
        for sample in samples:
            gt = sample.gt_instances
            scale = gt.bboxes.tensor.new_tensor(sample.scale_factor).repeat(2)
            sample.pred_instances = InstanceData(bboxes=gt.bboxes.tensor / scale, labels=gt.labels,
                                                 scores=torch.ones(len(gt.labels)))
        return samples


@pytest.mark.slow
def test_subset_evaluator_scores_the_images_it_ran(tmp_path):
    data_root = write_coco(tmp_path / 'data', seed=0, num_train=1, num_val=12, image_size=IMAGE_SIZE)
    cfg = tiny_detection_cfg(data_root, tmp_path / 'work')
    cfg.val_evaluator.metric = 'bbox'
    model = GroundTruthDetector()
    whole = SubsetEvaluator(cfg, model)
    subset = SubsetEvaluator(cfg, model, num_images=3)
    dense = normalize_pruning_ratios(0., TINY_BACKBONE['depths'])
    assert whole(dense) == 1.0
    # COCO's ground truth of the 9 images not run must not count as missed.
    assert subset(dense) == 1.0
    assert subset.describe() == 'coco/bbox_mAP (first 3 of 12 validation images)'
    assert whole.describe() == 'coco/bbox_mAP (all 12 validation images)'


@pytest.mark.slow
def test_count_macs_tool_counts_backbone_and_whole_model(adapted_detector, capsys, monkeypatch):
    tool = load_tool('count_macs')
    ratios = [[0.3, 0.3], [0.5, 0.8], [0.1, 0.7], [0.0, 0.4]]
    rows = tool.main([str(adapted_detector.config), str(adapted_detector.config), '--shape', '75', '110'])
    pruned = tool.main([str(adapted_detector.config), '--shape', '75', '110', '--pruning-ratios',
                        json.dumps(ratios), '--checkpoint', str(adapted_detector.checkpoint)])[0]
    dense = rows[0]
    assert round(dense['backbone GMACs'] * 1e9) == hand_count_macs(75, 110, normalize_pruning_ratios(0., (2,) * 4))
    assert round(pruned['backbone GMACs'] * 1e9) == hand_count_macs(75, 110, ratios)
    assert dense['model GMACs'] > dense['backbone GMACs']
    assert rows[1]['backbone MACs ratio'] == 1.0
    # --latency: every config's backbone and model in one alternating loop, the ratios against the first config.
    loops = RecordedLoops()
    monkeypatch.setattr(tool, 'alternating_latency_ms', loops)
    timed = tool.main([str(adapted_detector.config), str(adapted_detector.config), '--shape', '75', '110',
                       '--latency', '--device', 'cpu'])
    assert loops.sizes == [4]
    assert [(row['backbone ms'], row['model ms']) for row in timed] == [(10.0, 20.0), (30.0, 40.0)]
    assert timed[1]['backbone speedup'] == 1 / 3 and timed[1]['model speedup'] == 0.5
    with pytest.raises(SystemExit):
        tool.main([str(adapted_detector.config), '--pruning-ratios', '[0.1,'])
    assert 'pruning ratios must be JSON' in capsys.readouterr().err


@pytest.mark.slow
def test_visualize_windows_tool_draws_stages_and_predictions(adapted_detector, tmp_path, capsys):
    tool = load_tool('visualize_windows')
    out = tool.main([str(adapted_detector.config), str(adapted_detector.checkpoint), str(adapted_detector.image),
                     '--out', str(tmp_path / 'windows.png'), '--pruning-ratios', '[0.5, 0.5, 0.5, 0]',
                     '--device', 'cpu'])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    printed = capsys.readouterr().out
    # 64x64 input: 16x16 tokens = 16 windows of 4x4 in stage 1, 4 in stage 2, 1 in stages 3 and 4.
    for line in ('stage 1: block 1 (ratio 0.5) kept 8/16 windows', 'stage 2: block 1 (ratio 0.5) kept 2/4 windows',
                 'stage 3: block 1 (ratio 0.5) kept 0/1 windows', 'stage 4: block 1 (ratio 0) kept 1/1 windows'):
        assert line in printed
