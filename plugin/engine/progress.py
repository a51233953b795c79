"""A progress bar per training run, validation and test of an MMEngine runner."""
import sys
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from tqdm import tqdm


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar on stderr for each training run, validation and test, advanced every iteration (rank 0).

    mmengine's ``LoggerHook`` logs every ``interval`` iterations, to the terminal and the run's log file; this
    bar shows how far a run is and how long it has left when the log goes to the file only (tools/demo.py).
    The training bar shows the last iteration's loss.

    Args:
        name (str, optional): Put before the loop's name ('train', 'val', 'test'); default: the name of the
            runner's work_dir.
    """

    priority = 'VERY_LOW'

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        # one per loop: a validation runs inside a training run
        self._bars: dict[str, tqdm] = {}

    def _open(self, runner, loop: str, total: int) -> None:
        if is_main_process():
            name = self.name if self.name is not None else Path(runner.work_dir).name
            self._bars[loop] = tqdm(total=total, desc=f'{name} {loop}', unit='iter', file=sys.stderr,
                                    dynamic_ncols=True)

    def _advance(self, loop: str, outputs=None) -> None:
        bar = self._bars.get(loop)
        if bar is None:
            return
        if isinstance(outputs, dict) and 'loss' in outputs:
            bar.set_postfix(loss=f'{float(outputs["loss"]):.3f}', refresh=False)
        bar.update()

    def _close(self, loop: str) -> None:
        bar = self._bars.pop(loop, None)
        if bar is not None:
            bar.close()

    def before_train(self, runner) -> None:
        self._open(runner, 'train', runner.max_iters - runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._advance('train', outputs)

    def after_train(self, runner) -> None:
        self._close('train')

    def before_val_epoch(self, runner) -> None:
        self._open(runner, 'val', len(runner.val_dataloader))

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._advance('val')

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close('val')

    def before_test_epoch(self, runner) -> None:
        self._open(runner, 'test', len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._advance('test')

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close('test')
