"""Budgets of a pruning configuration: backbone MACs or measured backbone latency.

Both set the ratios on the backbone and run it in eval mode on a random input
of a fixed shape: a pruned block's cost depends on the number of windows it
keeps, which follows from the input shape and the ratios alone.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..models.utils.sparsity import PruningRatios
from ..utils.profiling import count_macs, median_latency_ms


class MacsBudget:
    """GMACs per image of the backbone at ``input_shape`` (H, W), attention included."""

    def __init__(self, backbone: nn.Module, input_shape: Sequence[int]) -> None:
        self.backbone = backbone
        self.input_shape: tuple[int, int] = tuple(input_shape)
        device = next(backbone.parameters()).device
        self.inputs = torch.randn(1, 3, *self.input_shape, device=device)
        self.name = 'GMACs@{}x{}'.format(*self.input_shape)

    def __call__(self, pruning_ratios: PruningRatios) -> float:
        self.backbone.set_pruning_ratios(pruning_ratios)
        self.backbone.eval()
        return count_macs(self.backbone, self.inputs) / 1e9


class LatencyBudget:
    """Median backbone latency in ms for a batch of ``batch_size`` images of ``input_shape`` (H, W).

    Measured on the backbone's device after ``warmup`` calls, over ``repeats`` calls.
    """

    def __init__(self, backbone: nn.Module, input_shape: Sequence[int], batch_size: int = 4,
                 warmup: int = 10, repeats: int = 30) -> None:
        if batch_size < 1 or warmup < 0 or repeats < 1:
            raise ValueError(f'batch_size and repeats must be >= 1 and warmup >= 0, got '
                             f'{batch_size}, {repeats} and {warmup}')
        self.backbone = backbone
        self.device = next(backbone.parameters()).device
        self.inputs = torch.randn(batch_size, 3, *input_shape, device=self.device)
        self.warmup, self.repeats = warmup, repeats
        self.name = 'ms@{}x{}x{}'.format(batch_size, *input_shape)

    def __call__(self, pruning_ratios: PruningRatios) -> float:
        self.backbone.set_pruning_ratios(pruning_ratios)
        self.backbone.eval()
        return median_latency_ms(lambda: self.backbone(self.inputs), self.device, self.warmup, self.repeats)
