"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread: small tensors gain little from two, and a busy machine stalls two badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
