"""SparseViT's sparsity-aware adaptation as an MMEngine hook."""
import random
from typing import Optional, Sequence, Union

from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.registry import HOOKS

from ..models.utils.sparsity import RATIO_CHOICES, find_sparse_backbone, normalize_pruning_ratios, sample_pruning_ratios
from ..utils.distributed import on_main_rank

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
                 eval_pruning_ratios: Union[float, Sequence] = 0.,
                 seed: Optional[int] = None) -> None:
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
