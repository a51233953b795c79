"""A hook that writes what one rank trained with to OUT/<tag>_rank<r>.json; imported by configs of
tests/test_distributed.py through custom_imports (tests/distributed on PYTHONPATH)."""
import hashlib
import json
from pathlib import Path

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from plugin.engine import SparsityAwareAdaptationHook


@HOOKS.register_module()
class RankRecordingHook(Hook):
    """Per training iteration the backbone's ratios; after training the seeds and a digest of the parameters."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str, tag: str) -> None:
        self.out_dir, self.tag = Path(out_dir), tag
        self.ratios = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.ratios[runner.iter] = model.backbone.pruning_ratios

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digest = hashlib.sha1()
        for param in model.parameters():
            digest.update(param.detach().cpu().numpy().tobytes())
        adaptation = next(hook for hook in runner.hooks if isinstance(hook, SparsityAwareAdaptationHook))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f'{self.tag}_rank{get_rank()}.json').write_text(json.dumps(dict(
            runner_seed=runner.seed, adaptation_seed=adaptation.seed, parameters=digest.hexdigest(),
            ratios={str(iteration): ratios for iteration, ratios in self.ratios.items()})))
