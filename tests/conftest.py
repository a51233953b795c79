"""Fixtures shared by several test modules, and the threads of the test processes."""
import multiprocessing
import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs two workers, one per core of this machine: one intra-op thread each keeps them from
    # stalling each other (with two, a Mask R-CNN training step took 2-3x as long while the other core was busy).
    # ONNX Runtime sessions follow torch's thread count.
    if os.environ.get('PYTEST_XDIST_WORKER'):
        torch.set_num_threads(1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A runner's training loop leaves its data loader's worker processes waiting on an iterator it abandoned;
    # an xdist worker ended without stopping them, and they stayed, blocked, holding its output pipe open.
    for child in multiprocessing.active_children():
        child.terminate()
        child.join()


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread: small tensors gain little from two, and a busy machine stalls two badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
