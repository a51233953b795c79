"""SparseViT's search space: one pruning ratio per block pair, non-decreasing inside a stage.

A configuration is held as its genes, per stage a sorted tuple of block-pair
ratios, e.g. ``((0.3,), (0.0,), (0.1, 0.2, 0.2), (0.0,))`` for Swin-T. Genes are
hashable, so a search can tell configurations apart and never repeat one.
"""
import random
from collections.abc import Sequence

from ..models.utils.sparsity import RATIO_CHOICES, PruningRatios, normalize_pruning_ratios, sample_pruning_ratios

Genes = tuple[tuple[float, ...], ...]


class SparsitySearchSpace:
    """Sampling, mutation and crossover of layer-wise pruning configurations.

    Args:
        depths (Sequence[int]): Blocks per stage of the backbone.
        choices (Sequence[float]): Ratios a block pair may take, each in [0, 1).
    """

    def __init__(self, depths: Sequence[int], choices: Sequence[float] = RATIO_CHOICES) -> None:
        if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f'depths must be positive block counts per stage, got {depths!r}')
        choices = tuple(choices)
        if not choices or any(not isinstance(c, (int, float)) or not 0 <= c < 1 for c in choices):
            raise ValueError(f'choices must be a non-empty sequence of ratios in [0, 1), got {choices!r}')
        self.depths = tuple(depths)
        self.choices = tuple(sorted({float(c) for c in choices}))

    def sample(self, rng: random.Random) -> Genes:
        return self.to_genes(sample_pruning_ratios(self.depths, rng, self.choices))

    def mutate(self, genes: Genes, rng: random.Random, prob: float) -> Genes:
        """Redraw each pair ratio with probability ``prob``, then re-sort each stage."""
        return tuple(tuple(sorted(rng.choice(self.choices) if rng.random() < prob else ratio
                                  for ratio in stage)) for stage in genes)

    def crossover(self, first: Genes, second: Genes, rng: random.Random) -> Genes:
        """Take each pair ratio from either parent at random, then re-sort each stage."""
        return tuple(tuple(sorted(rng.choice(pair) for pair in zip(stage_a, stage_b)))
                     for stage_a, stage_b in zip(first, second))

    def to_pruning_ratios(self, genes: Genes) -> PruningRatios:
        """Per-stage, per-block ratios as the backbone takes them."""
        return [[stage[block // 2] for block in range(depth)] for stage, depth in zip(genes, self.depths)]

    def to_genes(self, pruning_ratios) -> Genes:
        """Genes of a configuration in any form the backbone takes; it must lie in the space."""
        ratios = normalize_pruning_ratios(pruning_ratios, self.depths)
        for stage, stage_ratios in enumerate(ratios):
            for block in range(1, len(stage_ratios), 2):
                if stage_ratios[block] != stage_ratios[block - 1]:
                    raise ValueError(f'stage {stage}: blocks {block - 1} and {block} have ratios '
                                     f'{stage_ratios[block - 1]} and {stage_ratios[block]}; the search '
                                     f'space has one ratio per block pair')
            outside = sorted(set(stage_ratios) - set(self.choices))
            if outside:
                raise ValueError(f'stage {stage}: ratios {outside} are not among the choices {self.choices}')
        return tuple(tuple(stage_ratios[0::2]) for stage_ratios in ratios)

