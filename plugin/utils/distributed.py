"""torch.distributed through MMEngine's launchers (NCCL on GPUs, gloo on CPUs), and failures every rank agrees on.

A collective waits for every rank: a rank that fails before it leaves the others
waiting until the process group's timeout (30 minutes in the OpenMMLab configs).
:func:`on_every_rank` and :func:`on_main_rank` run a step so that a failure on any
rank reaches every rank, each of which then raises a clear error and exits.
"""
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import torch
from mmengine.dist import all_gather_object, broadcast_object_list, get_rank, init_dist, is_distributed

from .cli import USER_ERRORS

T = TypeVar('T')
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# A failure as it travels between ranks: (index into USER_ERRORS or -1, 'Type: message').
Failure = tuple[int, str]


@contextlib.contextmanager
def _without_cuda_device_pin() -> Iterator[None]:
    """MMEngine's launchers call ``torch.cuda.set_device(local_rank)`` unconditionally; processes that compute
    on CPUs (maybe on a machine without CUDA) have no device to pin, so the call is skipped while they run."""
    set_device = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = set_device


def check_launcher(launcher: str) -> None:
    """Refuse an unknown launcher, and 'none' in a process that torchrun started as one of several."""
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if launcher == 'none' and world_size > 1:
        # Each process would run the whole job on its own and write the same files.
        raise ValueError(f'this process is one of {world_size} (WORLD_SIZE, set by torchrun) but the launcher is '
                         f"'none': pass --launcher pytorch")


def init_distributed(launcher: str, device: str | torch.device | None = None,
                     timeout: int | None = None) -> None:
    """Start the default process group with MMEngine's launcher ('pytorch' under torchrun, 'slurm', 'mpi').

    'none' starts nothing (see :func:`check_launcher`), and a group already started is kept.
    ``device`` is where the processes compute: 'cuda' (NCCL, each process on the GPU of its
    local rank, as MMEngine's launchers pin it) or 'cpu' (gloo); None = 'cuda' where CUDA is
    available. ``timeout`` is in seconds (MMEngine's default when None).
    """
    check_launcher(launcher)
    if launcher == 'none' or is_distributed():
        return
    device_type = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu')).type
    if device_type not in ('cuda', 'cpu'):
        raise ValueError(f"distributed runs compute on 'cuda' (NCCL) or 'cpu' (gloo), got device {device!r}")
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device cuda was asked for, but this machine has no CUDA device: use cpu (gloo)')
    kwargs = {} if timeout is None else dict(timeout=timeout)
    if device_type == 'cuda':
        init_dist(launcher, backend='nccl', **kwargs)
        return
    with _without_cuda_device_pin():
        init_dist(launcher, backend='gloo', **kwargs)


def close_distributed() -> None:
    """Destroy the default process group, if one was started, before the process exits.

    A process that exits with its gloo group alive leaves the group's threads to the interpreter's teardown,
    where one two-process CPU training aborted after finishing ('terminate called without an active exception').
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_failure(error: BaseException) -> Failure:
    """What a rank sends the others about its ``error`` (plain data: any exception can be described)."""
    kind = next((index for index, error_type in enumerate(USER_ERRORS) if isinstance(error, error_type)), -1)
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return kind, f'{type(error).__name__}: {message}'


def raise_failure(rank: int, failure: Failure) -> NoReturn:
    """Raise, on a rank that did not fail, the failure of ``rank``: a user error stays one (a one-line message)."""
    kind, text = failure
    error_type = USER_ERRORS[kind] if kind >= 0 else RuntimeError
    raise error_type(f'rank {rank} failed: {text}')


def on_every_rank(step: Callable[[], T]) -> T:
    """``step()`` on every rank, which must all call it; this rank's result.

    If it fails on any rank, it fails on all: the failing rank raises its own error and
    every other rank raises one naming that rank and the error (a user error as the
    same type, so that the tools print it as one line).
    """
    if not is_distributed():
        return step()
    try:
        result, error = step(), None
    except Exception as caught:
        result, error = None, caught
    failures = all_gather_object(None if error is None else describe_failure(error))
    if error is not None:
        raise error
    failed = next((rank for rank, failure in enumerate(failures) if failure is not None), None)
    if failed is not None:
        raise_failure(failed, failures[failed])
    return result


def on_main_rank(step: Callable[[], T]) -> T:
    """``step()`` on rank 0 only, its result (pickled) on every rank; every rank calls this.

    A failure of ``step`` is raised on every rank (see :func:`on_every_rank`).
    """
    if not is_distributed():
        return step()
    outcome = [None]
    error = None
    if get_rank() == 0:
        try:
            outcome[0] = (step(), None)
        except Exception as caught:
            error = caught
            outcome[0] = (None, describe_failure(caught))
    broadcast_object_list(outcome)
    if error is not None:
        raise error
    result, failure = outcome[0]
    if failure is not None:
        raise_failure(0, failure)
    return result

