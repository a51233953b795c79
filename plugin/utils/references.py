"""The dense models that benchmarks and equivalence checks compare against, where they can be imported."""
import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch.nn as nn


@contextlib.contextmanager
def _stand_in_packages(names) -> Iterator[None]:
    """Empty packages under ``names`` in ``sys.modules`` inside the block only (existing entries are kept)."""
    added = [name for name in names if name not in sys.modules]
    for name in added:
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules[name] = package
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _mmdet_swin_from_source() -> type:
    """mmdet's ``SwinTransformer`` where ``mmdet.models`` cannot be imported (mmcv without compiled ops).

    ``mmdet.models`` imports modules that need ``mmcv.ops``; Swin needs only
    ``backbones/swin.py`` and the patch layers of ``layers/transformer/utils.py``, so
    those two files are executed on their own. The package entries they need exist only
    while they run: ``import mmdet.models`` elsewhere in the process is left as it was.
    """
    import mmdet

    package_dir = Path(mmdet.__file__).parent / 'models'

    def execute(module_name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module

    names = ('mmdet.models', 'mmdet.models.backbones', 'mmdet.models.layers', 'mmdet.models.backbones.swin')
    with _stand_in_packages(names):
        execute('mmdet.models.layers', package_dir / 'layers/transformer/utils.py')
        return execute('mmdet.models.backbones.swin', package_dir / 'backbones/swin.py').SwinTransformer


def mmdet_swin_transformer(**kwargs) -> tuple[str, nn.Module | None]:
    """``(name, mmdet's SwinTransformer(**kwargs))``, or ``(reason, None)`` when mmdet is not installed."""
    try:
        from mmdet.models.backbones import SwinTransformer
    except ImportError as error:
        try:
            SwinTransformer = _mmdet_swin_from_source()
        except ImportError:
            return 'mmdet is not installed', None
        print(f"mmdet.models failed to import ({error}); mmdet's swin.py was loaded on its own")
    return 'mmdet SwinTransformer (dense)', SwinTransformer(**kwargs)
