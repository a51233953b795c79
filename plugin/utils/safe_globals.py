"""Let torch's weights-only loader read the checkpoints that mmengine's runner writes.

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 neither passes
``weights_only`` nor limits what it pickles, so ``--resume``, ``tools/test.py``,
``load_from`` and the inferencers of mmdet, mmseg and mmdet3d fail on its own
checkpoints (``Unsupported global: ... HistoryBuffer``). ``import plugin`` allow-lists
exactly the types those checkpoints hold, found with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on runner checkpoints of
every config family: the message hub's ``HistoryBuffer``, and the numpy arrays,
scalars and dtypes its logs keep; and the ``argparse.Namespace`` that the authors'
DeiT-based training scripts (EfficientFormer, DynamicViT) store beside the weights.
Loading stays weights-only; nothing is turned off.
"""
import argparse
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

_MULTIARRAY = getattr(np, '_core', None) or np.core


def history_buffer_statistic(owner: type, name: str) -> Callable[..., Any]:
    """Stands in for ``getattr`` in a checkpoint: a ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; only such look-ups are answered, any other is refused."""
    method = getattr(HistoryBuffer, name, None) if owner is HistoryBuffer else None
    if not (callable(method) and (name in ('min', 'max', 'current', 'mean')
                                  or name in HistoryBuffer._statistics_methods)):
        raise pickle.UnpicklingError(f'the checkpoint asks for getattr({owner!r}, {name!r}); only the statistics '
                                     f'methods of mmengine\'s HistoryBuffer are allowed')
    return method


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list, for every weights-only ``torch.load`` of this process, what mmengine's checkpoints hold."""
    # numpy's array and scalar rebuilders, under numpy 2's module path and numpy 1's (older checkpoints).
    rebuilders = [(getattr(_MULTIARRAY.multiarray, name), f'{package}.multiarray.{name}')
                  for name in ('_reconstruct', 'scalar') for package in ('numpy._core', 'numpy.core')]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All']}
    torch.serialization.add_safe_globals([HistoryBuffer, argparse.Namespace, np.ndarray, np.dtype, *rebuilders,
                                          *dtype_classes,
                                          (history_buffer_statistic, 'builtins.getattr')])
