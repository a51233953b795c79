"""SparseViT's sparsity-aware adaptation as an MMEngine hook."""
import random
from typing import Optional, Sequence, Union

from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.registry import HOOKS

from ..models.utils.sparsity import RATIO_CHOICES, find_sparse_backbone, normalize_pruning_ratios, sample_pruning_ratios


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
        seed (int, optional): Seed of the sampler; None takes the runner's seed.
            The draw of iteration ``i`` depends only on (seed, i), so a resumed
            run and every rank of a distributed run see the same sequence.
    """

    def __init__(self,
                 choices: Sequence[float] = RATIO_CHOICES,
                 eval_pruning_ratios: Union[float, Sequence] = 0.,
                 seed: Optional[int] = None) -> None:
        choices = tuple(choices)
        if not choices or any(not isinstance(c, (int, float)) or not 0 <= c < 1 for c in choices):
            raise ValueError(f'choices must be a non-empty sequence of ratios in [0, 1), got {choices!r}')
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f'seed must be an int or None, got {seed!r}')
        self.choices = tuple(float(c) for c in choices)
        self.eval_pruning_ratios = eval_pruning_ratios
        self.seed = seed

    def before_run(self, runner) -> None:
        backbone = find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook')
        # Fails here, before any training, on ratios that do not fit the backbone.
        normalize_pruning_ratios(self.eval_pruning_ratios, backbone.depths)
        if self.seed is None:
            self.seed = runner.seed

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        backbone = find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook')
        rng = random.Random(f'{self.seed}-{runner.iter}')
        backbone.set_pruning_ratios(sample_pruning_ratios(backbone.depths, rng, self.choices))

    def before_val_epoch(self, runner) -> None:
        find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook').set_pruning_ratios(self.eval_pruning_ratios)

    def after_train(self, runner) -> None:
        find_sparse_backbone(runner.model, 'SparsityAwareAdaptationHook').set_pruning_ratios(self.eval_pruning_ratios)
