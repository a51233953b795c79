"""Validation metric of a model at given pruning ratios, through the config's own evaluator."""
import contextlib
import copy
import functools
import io
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from mmengine import fileio
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.dist import is_distributed
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, DefaultScope, init_default_scope
from mmengine.runner import Runner

from ..models.utils.checkpoint import load_model_checkpoint
from ..models.utils.sparsity import PruningRatios, find_sparse_backbone
from ..utils.distributed import describe_failure, on_every_rank, raise_failure

# Metrics searched by default, first present wins: box AP of mmdet's CocoMetric, mmseg's mIoU.
DEFAULT_METRICS = ('coco/bbox_mAP', 'mIoU')
# Key (after the metric's prefix) under which rank 0 sends a failure of its metric computation.
_METRIC_FAILURE = '__failure__'


def build_model(cfg: Config, checkpoint: str | None, device: torch.device | str) -> nn.Module:
    """The config's model with ``checkpoint`` loaded (no pretrained init), in eval mode on ``device``.

    The checkpoint must fit the model (``plugin.models.utils.checkpoint.load_model_checkpoint``).
    SyncBN layers stay as they are when a process group exists (in eval mode they use the running
    statistics and never synchronise) and become BN otherwise.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if not is_distributed():
        # Synchronised batch norm needs a process group; a single-process search has none.
        model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        load_model_checkpoint(model, checkpoint)
    model.to(device)
    model.eval()
    return model


def _is_instance_of(metric: BaseMetric, module: str, name: str) -> bool:
    """``isinstance(metric, module.name)`` without importing ``module`` where it is not installed."""
    return any(cls.__name__ == name and cls.__module__.startswith(module) for cls in type(metric).__mro__)


def restrict_metrics_to_samples(metrics: list[BaseMetric], dataset: BaseDataset, work_dir: Path) -> None:
    """Make every metric score only the samples of ``dataset`` (a subset of the annotation file's).

    mmdet's ``CocoMetric`` scores every image of its ``ann_file``, so images not run would count
    as missed: its image ids are set to the subset's. mmdet3d's ``KittiMetric`` (and subclasses)
    expect one prediction per entry of ``ann_file``: it gets a copy holding the subset only,
    written to ``work_dir``. Metrics that compute from the processed samples alone (mmseg's
    ``IoUMetric``) need nothing; any other metric with an ``ann_file`` is refused.
    """
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    for metric in metrics:
        if _is_instance_of(metric, 'mmdet.evaluation', 'CocoMetric'):
            metric.img_ids = [info['img_id'] for info in infos]
        elif _is_instance_of(metric, 'mmdet3d.evaluation', 'KittiMetric'):
            annotations = fileio.load(metric.ann_file)
            wanted = {info['sample_idx'] for info in infos}
            annotations['data_list'] = [info for info in annotations['data_list'] if info['sample_idx'] in wanted]
            subset_file = Path(work_dir) / f'subset_{Path(metric.ann_file).name}'
            fileio.dump(annotations, str(subset_file))
            metric.ann_file = str(subset_file)
        elif getattr(metric, 'ann_file', None):
            raise ValueError(f'{type(metric).__name__} scores against its whole ann_file; scoring a subset of '
                             f'the validation images with it is not supported: use all images '
                             f'(--num-val-images 0)')


@contextlib.contextmanager
def _quiet():
    """Hide the evaluators' per-run tables (pycocotools prints, mmengine logs) from the progress display."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


class SubsetEvaluator:
    """Metric of ``model`` at given pruning ratios on the first ``num_images`` of the config's val set.

    The metric is that of the subset: the ground truth of the images not run is left out
    (:func:`restrict_metrics_to_samples`), so it is the AP or mIoU the subset gives.

    Built after a process group has started, it runs on every rank: the config's sampler
    (mmengine's ``DefaultSampler``) gives each rank its shard of the images, the evaluator
    collects the predictions on rank 0, which computes the metrics, and every rank returns
    them. The metric is the one process would compute from the same predictions. A failure
    on any rank (in its shard, or in rank 0's metric computation) is raised on every rank.

    Args:
        cfg: The config; its ``val_dataloader`` and ``val_evaluator`` are used.
        model: The built model (see :func:`build_model`); its backbone takes pruning ratios.
        num_images: Images of the validation set to use (the first ones); None = all.
        metric: Key of the metric to return; None = the first of ``DEFAULT_METRICS`` present.
        quiet: Hide what the evaluator prints.
    """

    def __init__(self, cfg: Config, model: nn.Module, num_images: int | None = None,
                 metric: str | None = None, quiet: bool = True) -> None:
        if num_images is not None and num_images < 1:
            raise ValueError(f'num_images must be >= 1 or None (all), got {num_images}')
        self.model = model
        self.backbone = find_sparse_backbone(model, 'the sparsity search')
        self.metric = metric
        self.quiet = quiet
        dataloader_cfg = copy.deepcopy(cfg.val_dataloader)
        if num_images is not None:
            # BaseDataset keeps the first `indices` samples of its annotations.
            dataloader_cfg.dataset.indices = num_images
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
            self.dataloader = Runner.build_dataloader(dataloader_cfg, seed=0)
            self.evaluator = Evaluator(copy.deepcopy(cfg.val_evaluator))
        self.evaluator.dataset_meta = self.dataloader.dataset.metainfo
        self._metric_error: Exception | None = None
        if is_distributed():
            for evaluator_metric in self.evaluator.metrics:
                evaluator_metric.compute_metrics = self._returning_failures(evaluator_metric.compute_metrics)
        self._subset_dir = tempfile.TemporaryDirectory(prefix='effidense-subset-')
        restrict_metrics_to_samples(self.evaluator.metrics, self.dataloader.dataset, Path(self._subset_dir.name))
        total = len(self.dataloader.dataset.load_data_list()) if num_images is not None else None
        scored = len(self.dataloader.dataset)
        self.images = (f'all {scored} validation images' if total is None or scored == total
                       else f'first {scored} of {total} validation images')

    def describe(self) -> str:
        """What the returned number is, e.g. ``'coco/bbox_mAP (first 500 of 5000 validation images)'``."""
        return f'{self.metric or "metric"} ({self.images})'

    def metrics(self, pruning_ratios: PruningRatios) -> dict[str, float]:
        """Every metric the config's evaluator reports, at ``pruning_ratios``."""
        self.backbone.set_pruning_ratios(pruning_ratios)
        self.model.eval()
        with _quiet() if self.quiet else contextlib.nullcontext(), torch.no_grad():
            # Every rank finishes its shard before the evaluator's collection waits for them all.
            on_every_rank(self._process_shard)
            metrics = self.evaluator.evaluate(len(self.dataloader.dataset))
        failures = [value for key, value in metrics.items() if key.endswith(_METRIC_FAILURE)]
        if failures:
            error, self._metric_error = self._metric_error, None
            if error is not None:
                raise error
            raise_failure(0, failures[0])
        return metrics

    def _process_shard(self) -> None:
        for data_batch in self.dataloader:
            outputs = self.model.val_step(data_batch)
            self.evaluator.process(data_samples=outputs, data_batch=data_batch)

    def _returning_failures(self, compute_metrics: Callable[[list], dict]) -> Callable[[list], dict]:
        """``compute_metrics`` (run by rank 0 only) returning its failure instead of raising it: rank 0 then
        still reaches the broadcast of the metrics that every other rank waits in, and the failure reaches them."""
        @functools.wraps(compute_metrics)
        def compute(results: list) -> dict:
            try:
                return compute_metrics(results)
            except Exception as error:
                self._metric_error = error
                return {_METRIC_FAILURE: describe_failure(error)}
        return compute

    def __call__(self, pruning_ratios: PruningRatios) -> float:
        metrics = self.metrics(pruning_ratios)
        if self.metric is None:
            # Resolved once, so that every candidate is ranked by the same metric.
            self.metric = next((k for k in DEFAULT_METRICS if k in metrics), None)
        if self.metric not in metrics:
            raise ValueError(f'metric {self.metric!r} is not among those the evaluator reports: '
                             f'{sorted(metrics)}; choose one of them')
        return float(metrics[self.metric])
