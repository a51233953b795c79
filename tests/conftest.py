"""Fixtures shared by several test modules, and the threads of the test processes."""
import functools
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
    _find_external_configs_once()
    _build_the_onnx_registry_once()
    _leave_config_text_unformatted()


def _find_external_configs_once() -> None:
    """mmengine finds each ``mmdet::``/``mmseg::`` config a config inherits by reading all that package's model
    metafiles again (mmdet: some 70 YAML files, about 0.3 s); the tests read hundreds of configs, so each answer
    (the config's metainfo, or the message of the ValueError that sends mmengine to the package's _base_ folder)
    is kept. The message, not the error: a raised error keeps the frames it passed through, and with them every
    test's model (a worker grew to 19.6 GB and was killed)."""
    from mmengine.config import utils

    find = utils._get_cfg_metainfo

    @functools.cache
    def found(package_path: str, cfg_path: str) -> tuple[dict | None, str | None]:
        try:
            return find(package_path, cfg_path), None
        except ValueError as error:
            return None, str(error)

    def find_once(package_path: str, cfg_path: str) -> dict:
        metainfo, message = found(package_path, cfg_path)
        if message is not None:
            raise ValueError(message)
        return metainfo

    utils._get_cfg_metainfo = find_once


def _build_the_onnx_registry_once() -> None:
    """``torch.onnx.export`` builds its operator registry from torchlib on every call (about 1 s); no test
    registers its own translations, so one registry per opset serves every export."""
    from torch.onnx._internal.exporter import _registration

    build = _registration.ONNXRegistry.from_torchlib.__func__
    registries = {}

    def from_torchlib_once(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in registries:
            registries[key] = build(cls, *args, **kwargs)
        return registries[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib_once)


def _leave_config_text_unformatted() -> None:
    """mmengine formats a config's text with yapf (about 0.7 s) every time a runner logs or dumps it and every time
    it saves a checkpoint; the tests read those configs back but never their layout, and the unformatted text is
    the same Python (yapf was 47 of the quick demo's 160 s). Patched here because mmengine 0.10.7's
    ``Config.fromfile`` ignores its ``format_python_code`` argument."""
    from mmengine.config import config

    def unformatted(text: str, **_) -> tuple[str, bool]:
        return text, False

    config.FormatCode = unformatted


# The files that take longest (seconds on this 2-core machine, 2026-12-04: 129, 87, 82, 74, 63, 47, 45, 38, 27),
# longest first: `make test` hands whole files to two workers in collection order, and a long file handed out
# last left one core idle for a minute.
SLOWEST_FILES_FIRST = ('test_export.py', 'test_configs.py', 'test_distributed.py', 'test_demo.py', 'test_mono3d.py',
                       'test_openmmlab_tools.py', 'test_deploy_detector.py', 'test_whole_benchmark.py',
                       'test_efficientformer.py')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FILES_FIRST.index(name) if name in SLOWEST_FILES_FIRST else len(SLOWEST_FILES_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order


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
