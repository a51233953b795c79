"""Validation metric of a model at given pruning ratios, through the config's own evaluator."""
import contextlib
import copy
import io
import logging
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner, load_state_dict
from mmengine.runner.checkpoint import CheckpointLoader

from ..engine.hooks import find_sparse_backbone
from ..models.utils.sparsity import PruningRatios

# Metrics searched by default, first present wins: box AP of mmdet's CocoMetric, mmseg's mIoU.
DEFAULT_METRICS = ('coco/bbox_mAP', 'mIoU')


def load_trusted_checkpoint(model: nn.Module, checkpoint: str) -> dict:
    """Load a checkpoint (local path or URL) into ``model``; returns the whole checkpoint.

    A local file is read with ``weights_only=False``: checkpoints that MMEngine's
    runner saves pickle numpy values and logging buffers, which torch's default
    weights-only loader refuses, so only load files you trust.
    """
    if Path(checkpoint).is_file():
        loaded = torch.load(checkpoint, map_location='cpu', weights_only=False)
    else:
        loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state_dict = loaded.get('state_dict', loaded)
    state_dict = {key[len('module.'):] if key.startswith('module.') else key: value
                  for key, value in state_dict.items()}
    load_state_dict(model, state_dict, strict=False, logger='current')
    return loaded


def build_model(cfg: Config, checkpoint: Optional[str], device: torch.device | str) -> nn.Module:
    """The config's model with ``checkpoint`` loaded (no pretrained init), in eval mode on ``device``."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    # Synchronised batch norm needs a process group; a single-process search has none.
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if checkpoint is not None:
        load_trusted_checkpoint(model, checkpoint)
    model.to(device)
    model.eval()
    return model


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

    Args:
        cfg: The config; its ``val_dataloader`` and ``val_evaluator`` are used.
        model: The built model (see :func:`build_model`); its backbone takes pruning ratios.
        num_images: Images of the validation set to use (the first ones); None = all.
        metric: Key of the metric to return; None = the first of ``DEFAULT_METRICS`` present.
        quiet: Hide what the evaluator prints.
    """

    def __init__(self, cfg: Config, model: nn.Module, num_images: Optional[int] = None,
                 metric: Optional[str] = None, quiet: bool = True) -> None:
        if num_images is not None and num_images < 1:
            raise ValueError(f'num_images must be >= 1 or None (all), got {num_images}')
        self.model = model
        self.backbone = find_sparse_backbone(model)
        self.metric = metric
        self.quiet = quiet
        dataloader_cfg = copy.deepcopy(cfg.val_dataloader)
        if num_images is not None:
            # BaseDataset keeps the first `indices` samples of its annotations.
            dataloader_cfg.dataset.indices = num_images
        self.dataloader = Runner.build_dataloader(dataloader_cfg, seed=0)
        self.evaluator = Evaluator(copy.deepcopy(cfg.val_evaluator))
        self.evaluator.dataset_meta = self.dataloader.dataset.metainfo

    def metrics(self, pruning_ratios: PruningRatios) -> Dict[str, float]:
        """Every metric the config's evaluator reports, at ``pruning_ratios``."""
        self.backbone.set_pruning_ratios(pruning_ratios)
        self.model.eval()
        with _quiet() if self.quiet else contextlib.nullcontext(), torch.no_grad():
            for data_batch in self.dataloader:
                outputs = self.model.val_step(data_batch)
                self.evaluator.process(data_samples=outputs, data_batch=data_batch)
            return self.evaluator.evaluate(len(self.dataloader.dataset))

    def __call__(self, pruning_ratios: PruningRatios) -> float:
        metrics = self.metrics(pruning_ratios)
        if self.metric is None:
            # Resolved once, so that every candidate is ranked by the same metric.
            self.metric = next((k for k in DEFAULT_METRICS if k in metrics), None)
        if self.metric not in metrics:
            raise ValueError(f'metric {self.metric!r} is not among those the evaluator reports: '
                             f'{sorted(metrics)}; choose one of them')
        return float(metrics[self.metric])
