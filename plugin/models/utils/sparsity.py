"""SparseViT's layer-wise pruning configurations: validation, sampling, the paper's searched ones."""
import math
import numbers
import random
from collections.abc import Sequence
from pathlib import Path

import torch.nn as nn
from mmengine.model import is_model_wrapper

# The paper's search space: one ratio per block pair (regular + shifted block).
RATIO_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Where the paper's searched configurations are written once (a config `_base_` fragment of this repository).
PAPER_RATIOS_FRAGMENT = Path(__file__).resolve().parents[3] / 'configs/sparsevit/_base_/paper_pruning_ratios.py'

StageRatios = float | Sequence[float]
PruningRatios = list[list[float]]


def _is_ratio_number(value: object) -> bool:
    """A real number (numpy's too), not a bool: ``False`` is no pruning ratio."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def normalize_pruning_ratios(pruning_ratios: float | Sequence[StageRatios],
                             depths: Sequence[int]) -> PruningRatios:
    """Expand and check ``pruning_ratios`` against the stage depths.

    Accepts one number for the whole network, or one entry per stage that is a
    number (every block of the stage) or a list with one ratio per block; numpy
    scalars are numbers, strings and bools are not. Raises ``TypeError`` for a
    value of the wrong type and ``ValueError`` naming the stage, the block and the
    broken rule otherwise.
    """
    if _is_ratio_number(pruning_ratios):
        pruning_ratios = [float(pruning_ratios)] * len(depths)
    if not isinstance(pruning_ratios, Sequence) or isinstance(pruning_ratios, str):
        raise TypeError(f'pruning_ratios must be a number or a list with one entry per stage '
                        f'({len(depths)} stages), got {pruning_ratios!r}')
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


def paper_pruning_ratios(fragment: Path | None = None) -> dict[str, PruningRatios]:
    """The paper's searched configurations of Swin-T, ``{'cfg1': ..., 'cfg2': ..., 'cfg3': ...}``,
    read from their config fragment (default: the one of this repository)."""
    from mmengine.config import Config
    fragment = Path(fragment or PAPER_RATIOS_FRAGMENT)
    if not fragment.is_file():
        raise FileNotFoundError(f'{fragment} is missing: the paper\'s configurations are read from the '
                                f'repository\'s configs/ (run from a clone of it, or pass the fragment\'s path)')
    cfg = Config.fromfile(str(fragment))
    return {name[len('paper_'):]: cfg[name] for name in sorted(cfg.keys()) if name.startswith('paper_cfg')}


def find_sparse_backbone(model: nn.Module, purpose: str = 'this') -> nn.Module:
    """The ``backbone`` of a (possibly wrapped) detector or segmentor that takes pruning ratios.

    ``purpose`` names what needs it in the error, e.g. ``'--pruning-ratios'``.
    """
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not callable(getattr(backbone, 'set_pruning_ratios', None)) \
            or not hasattr(backbone, 'depths'):
        raise TypeError(f'{purpose} needs a window-sparse backbone (SparseViTSwin: `model.backbone` with '
                        f'`set_pruning_ratios` and `depths`); {type(model).__name__} has '
                        f'{type(backbone).__name__}')
    return backbone
