"""SparseViT's layer-wise pruning configurations: validation, sampling, the paper's searched ones, and the
contract of a window-sparse backbone."""
import abc
import math
import numbers
import random
from collections.abc import Sequence

import torch.nn as nn
from mmengine.model import is_model_wrapper

from .records import RecordingBackbone

# The paper's search space: one ratio per block pair (regular + shifted block).
RATIO_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

StageRatios = float | Sequence[float]
PruningRatios = list[list[float]]

# The paper's three searched layer-wise configurations of SparseViT-Swin-T (the authors' sparsevit_cfg1_42ms.py,
# sparsevit_cfg2_35ms.py, sparsevit_cfg3_33ms.py): one list of per-block ratios per stage. Written only here; the
# configs' `_base_` fragment, the tools and ``SparseViTSwin(pruning_ratios='cfg2')`` take them by name.
PAPER_PRUNING_RATIOS: dict[str, PruningRatios] = {
    'cfg1': [[0.3, 0.3], [0., 0.], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0., 0.]],
    'cfg2': [[0.6, 0.6], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]],
    'cfg3': [[0.7, 0.7], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]],
}
# The depths they were searched for (Swin-T).
PAPER_DEPTHS = (2, 2, 6, 2)


def _is_ratio_number(value: object) -> bool:
    """A real number (numpy's too), not a bool: ``False`` is no pruning ratio."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def normalize_pruning_ratios(pruning_ratios: float | Sequence[StageRatios],
                             depths: Sequence[int]) -> PruningRatios:
    """Expand and check ``pruning_ratios`` against the stage depths.

    Accepts one number for the whole network, or one entry per stage that is a
    number (every block of the stage) or a list with one ratio per block; numpy
    scalars are numbers, bools are not), or a name of the paper's searched
    configurations of Swin-T (``'cfg1'``, ``'cfg2'``, ``'cfg3'``, see ``PAPER_PRUNING_RATIOS``).
    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` naming the
    stage, the block and the broken rule otherwise.
    """
    if isinstance(pruning_ratios, str) and pruning_ratios in PAPER_PRUNING_RATIOS:
        if tuple(depths) != PAPER_DEPTHS:
            raise ValueError(f'pruning_ratios={pruning_ratios!r} is the paper\'s configuration of Swin-T (depths '
                             f'{PAPER_DEPTHS}); this backbone has depths {tuple(depths)}: give one ratio or one '
                             f'list of per-block ratios per stage')
        pruning_ratios = PAPER_PRUNING_RATIOS[pruning_ratios]
    if _is_ratio_number(pruning_ratios):
        pruning_ratios = [float(pruning_ratios)] * len(depths)
    if not isinstance(pruning_ratios, Sequence) or isinstance(pruning_ratios, str):
        raise TypeError(f'pruning_ratios must be a number or a list with one entry per stage '
                        f'({len(depths)} stages), got {pruning_ratios!r}; the paper\'s configurations are named '
                        f'{sorted(PAPER_PRUNING_RATIOS)}')
    if len(pruning_ratios) != len(depths):
        raise ValueError(f'pruning_ratios has {len(pruning_ratios)} entries but the backbone has '
                         f'{len(depths)} stages (depths={tuple(depths)}): give one number or one '
                         f'list of per-block ratios per stage')
    normalized = []
    for stage, (ratios, depth) in enumerate(zip(pruning_ratios, depths)):
        if _is_ratio_number(ratios):
            ratios = [float(ratios)] * depth
        if not isinstance(ratios, Sequence) or isinstance(ratios, str):
            raise TypeError(f'pruning_ratios of stage {stage} must be a number or a list of {depth} per-block '
                            f'ratios, got {ratios!r} ({type(ratios).__name__})')
        if len(ratios) != depth:
            raise ValueError(f'pruning_ratios of stage {stage} must be a number or a list of '
                             f'{depth} per-block ratios (the stage has {depth} blocks), got {ratios!r}')
        for block, ratio in enumerate(ratios):
            if not _is_ratio_number(ratio):
                raise TypeError(f'pruning ratio of stage {stage}, block {block} is {ratio!r} '
                                f'({type(ratio).__name__}): ratios are numbers in [0, 1)')
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f'pruning ratio of stage {stage}, block {block} is {ratio!r}: '
                                 f'ratios must lie in [0, 1)')
            if block > 0 and ratio < ratios[block - 1]:
                raise ValueError(f'pruning ratio of stage {stage}, block {block} ({ratio}) is below '
                                 f'that of block {block - 1} ({ratios[block - 1]}): ratios must not '
                                 f'decrease inside a stage, since a pruned window stays pruned')
        normalized.append([float(r) for r in ratios])
    return normalized


def sample_pruning_ratios(depths: Sequence[int], rng: random.Random,
                          choices: Sequence[float] = RATIO_CHOICES) -> PruningRatios:
    """A random valid configuration: one ratio per block pair, sorted within each stage."""
    sampled = []
    for depth in depths:
        pair_ratios = sorted(rng.choice(choices) for _ in range((depth + 1) // 2))
        sampled.append([pair_ratios[block // 2] for block in range(depth)])
    return sampled


def num_kept_windows(num_windows: int, ratio: float) -> int:
    """``floor((1 - ratio) * num_windows)``: the windows a block with ``ratio`` keeps.

    The tolerance keeps float error from dropping a window (5 * (1 - 0.8) is 0.999...).
    """
    return math.floor(num_windows * (1 - ratio) + 1e-9)


def paper_pruning_ratios() -> dict[str, PruningRatios]:
    """The paper's searched configurations by name (a copy of ``PAPER_PRUNING_RATIOS``), for the tools'
    ``--pruning-ratios cfg2``."""
    return {name: [list(stage) for stage in ratios] for name, ratios in PAPER_PRUNING_RATIOS.items()}


class WindowSparseBackbone(RecordingBackbone):
    """The contract of a window-sparse backbone: what the hooks, the search, the tools and MACs counting call.

    ``depths`` (blocks per stage) and ``pruning_ratios`` (one list of per-block ratios per stage) are
    attributes; ``set_pruning_ratios`` takes every form ``normalize_pruning_ratios`` does.
    """
    depths: tuple[int, ...]
    pruning_ratios: PruningRatios

    @abc.abstractmethod
    def set_pruning_ratios(self, pruning_ratios: float | Sequence | str) -> None:
        """Change the per-block ratios (checked as the constructor argument)."""


def find_sparse_backbone(model: nn.Module, purpose: str = 'this') -> WindowSparseBackbone:
    """The ``backbone`` of a (possibly wrapped) detector or segmentor that takes pruning ratios.

    ``purpose`` names what needs it in the error, e.g. ``'--pruning-ratios'``.
    """
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, WindowSparseBackbone):
        raise TypeError(f'{purpose} needs a window-sparse backbone (a WindowSparseBackbone, with depths, '
                        f'pruning_ratios and set_pruning_ratios: SparseViTSwin); {type(model).__name__} has '
                        f'{type(backbone).__name__}')
    return backbone
