"""SparseViT's sparsity-aware adaptation, and the object coverage of its kept windows, as MMEngine hooks."""
import dataclasses
import random
from collections.abc import Sequence

import numpy as np
import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.registry import HOOKS

from ..models.utils.records import ForwardRecord, RecordingScope
from ..models.utils.sparsity import RATIO_CHOICES, find_sparse_backbone, normalize_pruning_ratios, sample_pruning_ratios
from ..utils.distributed import on_main_rank
from ..visualization.windows import WindowCoverage, kept_window_masks, object_coverage

# Where a checkpoint keeps the seed of the sequence, so that a resumed run continues it.
CHECKPOINT_SEED_KEY = 'sparsity_aware_adaptation_seed'


@HOOKS.register_module()
class SparsityAwareAdaptationHook(Hook):
    """Train a SparseViT backbone under a new random layer-wise sparsity every iteration.

    Before each training iteration, one ratio per block pair is drawn from
    ``choices`` and sorted to be non-decreasing inside each stage (the search
    space of the evolutionary search). Validation, and everything after
    training, runs at the fixed ``eval_pruning_ratios`` so metrics are
    comparable between epochs. Test runs keep whatever ratios are set.

    Args:
        choices (Sequence[float]): Ratios a block pair may take, each in [0, 1).
        eval_pruning_ratios (float | list): Ratios for validation (any form the
            backbone accepts); 0 = dense.
        seed (int, optional): Seed of the sampler; None takes the runner's seed
            on rank 0 (the base seed, also with ``randomness=dict(diff_rank_seed=True)``,
            which gives every other rank another seed), shared with every rank.
            The draw of iteration ``i`` depends only on (seed, i), so every rank
            of a distributed run sees the same sequence. The seed is saved in
            each checkpoint and a run resumed (or loaded) from one takes it
            back, so a resumed run continues the sequence; a seed given here
            wins over the checkpoint's (with a warning when they differ).
    """

    def __init__(self,
                 choices: Sequence[float] = RATIO_CHOICES,
                 eval_pruning_ratios: float | Sequence = 0.,
                 seed: int | None = None) -> None:
        choices = tuple(choices)
        if not choices or any(not isinstance(c, (int, float)) or not 0 <= c < 1 for c in choices):
            raise ValueError(f'choices must be a non-empty sequence of ratios in [0, 1), got {choices!r}')
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f'seed must be an int or None, got {seed!r}')
        self.choices = tuple(float(c) for c in choices)
        self.eval_pruning_ratios = eval_pruning_ratios
        self.given_seed = seed
        self.seed = seed

    def before_run(self, runner) -> None:
        backbone = find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook')
        # Fails here, before any training, on ratios that do not fit the backbone.
        normalize_pruning_ratios(self.eval_pruning_ratios, backbone.depths)
        if self.seed is None:
            self.seed = on_main_rank(lambda: runner.seed)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})[CHECKPOINT_SEED_KEY] = self.seed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = checkpoint.get('meta', {}).get(CHECKPOINT_SEED_KEY)
        if saved is None or saved == self.seed:
            return
        if self.given_seed is not None:
            runner.logger.warning(f'SparsityAwareAdaptationHook: the checkpoint\'s sequence has seed {saved}; '
                                  f'the configured seed {self.given_seed} is used instead')
            return
        runner.logger.info(f'SparsityAwareAdaptationHook: continuing the checkpoint\'s sequence (seed {saved})')
        self.seed = saved

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        backbone = find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook')
        rng = random.Random(f'{self.seed}-{runner.iter}')
        backbone.set_pruning_ratios(sample_pruning_ratios(backbone.depths, rng, self.choices))

    def before_val_epoch(self, runner) -> None:
        find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook').set_pruning_ratios(self.eval_pruning_ratios)

    def after_train(self, runner) -> None:
        find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook').set_pruning_ratios(self.eval_pruning_ratios)


@HOOKS.register_module()
class ObjectCoverageHook(Hook):
    """Measures what window pruning keeps: per stage, the share of ground-truth object pixels that lie in
    the windows a SparseViT backbone kept (``coverage/stage{i}``) and the share of all image pixels in them
    (``kept_area/stage{i}``, what windows chosen without regard to the objects would cover).

    Pixels are pooled over the whole validation or test set and the results join that run's metrics
    (``runner.test()`` returns them, the logger prints them). Each stage counts its last unshifted block,
    the one :func:`plugin.visualization.kept_window_masks` draws, in the record of the iteration's backbone
    pass (recorded from the start to the end of each iteration). ``i`` counts stages from 1.

    Args:
        ground_truth (str): 'masks': an image's object pixels are the union of its instance masks
            (the pipeline must load them: ``LoadAnnotations(with_mask=True)``); 'boxes': the pixels whose
            centres lie in a ground-truth box, boxes in the frame of the loaded image as mmdet's test
            pipelines load them (after ``Resize``, in ``ori_shape``).
    """

    GROUND_TRUTHS = ('masks', 'boxes')

    def __init__(self, ground_truth: str = 'masks') -> None:
        if ground_truth not in self.GROUND_TRUTHS:
            raise ValueError(f'ground_truth must be one of {self.GROUND_TRUTHS}, got {ground_truth!r}')
        self.ground_truth = ground_truth
        self.counts: list = []
        self._scope: RecordingScope | None = None

    def before_run(self, runner) -> None:
        find_sparse_backbone(runner.model, 'ObjectCoverageHook')

    def before_val_epoch(self, runner) -> None:
        self.counts = []

    def before_test_epoch(self, runner) -> None:
        self.counts = []

    def before_val_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        self._start_recording()

    def before_test_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        self._start_recording()

    def after_val_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None, outputs=None) -> None:
        self._count(self._stop_recording(), outputs)

    def after_test_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None, outputs=None) -> None:
        self._count(self._stop_recording(), outputs)

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        self._add_metrics(metrics)

    def after_test_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        self._add_metrics(metrics)

    def _start_recording(self) -> None:
        # An iteration that raised never reached its after_iter: its scope ends here.
        self._stop_recording()
        self._scope = RecordingScope()

    def _stop_recording(self) -> list[ForwardRecord]:
        records = [] if self._scope is None else self._scope.close()
        self._scope = None
        return records

    def _count(self, records: list[ForwardRecord], outputs: Sequence) -> None:
        if len(records) != 1:
            raise RuntimeError(f'ObjectCoverageHook counts the windows of one backbone forward pass per evaluation '
                               f'iteration; this one ran {len(records)} (test-time augmentation is not supported)')
        for index, sample in enumerate(outputs):
            panels = kept_window_masks(records[0], image_index=index)
            stages = object_coverage(panels, self._object_mask(sample), sample.metainfo['img_shape'])
            self.counts = stages if not self.counts else [a + b for a, b in zip(self.counts, stages)]

    def _object_mask(self, sample) -> np.ndarray:
        instances = sample.get('gt_instances')
        height, width = sample.metainfo['ori_shape'][:2]
        if self.ground_truth == 'boxes':
            if instances is None or 'bboxes' not in instances:
                raise ValueError('ObjectCoverageHook(ground_truth="boxes") needs ground-truth boxes in the '
                                 'evaluated samples: add LoadAnnotations(with_bbox=True) to the test pipeline')
            rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
            mask = np.zeros((height, width), dtype=bool)
            for x1, y1, x2, y2 in instances.bboxes.cpu().numpy().reshape(-1, 4):
                mask |= ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
            return mask
        if instances is None or 'masks' not in instances:
            raise ValueError('ObjectCoverageHook(ground_truth="masks") needs ground-truth instance masks in the '
                             'evaluated samples: add LoadAnnotations(with_mask=True) to the test pipeline, '
                             'or use ground_truth="boxes"')
        masks = instances.masks.to_ndarray().astype(bool)
        shapes = {tuple(sample.metainfo['ori_shape'][:2]), tuple(sample.metainfo['img_shape'][:2])}
        if masks.shape[1:] not in shapes:
            raise ValueError(f'ground-truth masks of shape {masks.shape[1:]} match neither the loaded image '
                             f'nor the resized one {sorted(shapes)}')
        return masks.any(axis=0)

    def _add_metrics(self, metrics: dict[str, float] | None) -> None:
        if metrics is None or not self.counts:
            return
        # pooled over every rank's images in a distributed run
        totals = torch.tensor([dataclasses.astuple(stage) for stage in self.counts], dtype=torch.float64)
        all_reduce(totals)
        for stage, counts in enumerate(totals.tolist(), start=1):
            pooled = WindowCoverage(*(int(value) for value in counts))
            metrics[f'coverage/stage{stage}'] = pooled.coverage
            metrics[f'kept_area/stage{stage}'] = pooled.kept_area
