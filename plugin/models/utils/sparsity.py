"""SparseViT's layer-wise pruning configurations: validation and sampling."""
import math
import random
from typing import List, Sequence, Union

# The paper's search space: one ratio per block pair (regular + shifted block).
RATIO_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

StageRatios = Union[float, Sequence[float]]
PruningRatios = List[List[float]]


def normalize_pruning_ratios(pruning_ratios: Union[float, Sequence[StageRatios]],
                             depths: Sequence[int]) -> PruningRatios:
    """Expand and check ``pruning_ratios`` against the stage depths.

    Accepts one float for the whole network, or one entry per stage that is a
    float (every block of the stage) or a list with one ratio per block.
    Raises ``ValueError`` naming the stage, the block and the broken rule.
    """
    if isinstance(pruning_ratios, (int, float)):
        pruning_ratios = [float(pruning_ratios)] * len(depths)
    if not isinstance(pruning_ratios, Sequence) or isinstance(pruning_ratios, str):
        raise ValueError(f'pruning_ratios must be a float or a list with one entry per stage '
                         f'({len(depths)} stages), got {pruning_ratios!r}')
    if len(pruning_ratios) != len(depths):
        raise ValueError(f'pruning_ratios has {len(pruning_ratios)} entries but the backbone has '
                         f'{len(depths)} stages (depths={tuple(depths)}): give one float or one '
                         f'list of per-block ratios per stage')
    normalized = []
    for stage, (ratios, depth) in enumerate(zip(pruning_ratios, depths)):
        if isinstance(ratios, (int, float)):
            ratios = [float(ratios)] * depth
        if not isinstance(ratios, Sequence) or isinstance(ratios, str) or len(ratios) != depth:
            raise ValueError(f'pruning_ratios of stage {stage} must be a float or a list of '
                             f'{depth} per-block ratios (the stage has {depth} blocks), got {ratios!r}')
        for block, ratio in enumerate(ratios):
            if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
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
