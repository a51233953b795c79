"""Gumbel-Softmax temperature annealing for EfficientFormer supernet training."""

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..models.backbones.efficientformer_supernet import EfficientFormerSupernet


def find_supernets(model: nn.Module) -> list[EfficientFormerSupernet]:
    """Every ``EfficientFormerSupernet`` inside a (possibly wrapped) model, or a TypeError."""
    if is_model_wrapper(model):
        model = model.module
    supernets = [module for module in model.modules() if isinstance(module, EfficientFormerSupernet)]
    if not supernets:
        raise TypeError(f'{type(model).__name__} holds no EfficientFormerSupernet: GumbelTemperatureHook '
                        f'anneals the architecture weights of one')
    return supernets


@HOOKS.register_module()
class GumbelTemperatureHook(Hook):
    """Anneal the supernet's Gumbel-Softmax temperature exponentially from ``start`` to ``end``.

    Early high temperatures let every path train; low ones at the end make the
    sampled architectures nearly discrete, so the importance scores separate.
    The temperature of iteration ``i`` depends only on ``i``, so resumed runs continue the schedule.
    """

    def __init__(self, start: float = 5., end: float = 0.5) -> None:
        if not 0 < end <= start:
            raise ValueError(f'temperatures must satisfy 0 < end <= start, got start={start}, end={end}')
        self.start = float(start)
        self.end = float(end)

    def temperature(self, progress: float) -> float:
        """Temperature at ``progress`` in [0, 1] of training."""
        return self.start * (self.end / self.start)**min(max(progress, 0.), 1.)

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        temperature = self.temperature(runner.iter / max(runner.max_iters - 1, 1))
        for supernet in find_supernets(runner.model):
            supernet.set_temperature(temperature)
        runner.message_hub.update_scalar('train/gumbel_temperature', temperature)
