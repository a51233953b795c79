"""EffiDense: efficient vision-transformer backbones for OpenMMLab dense prediction.

Importing this package registers every module once, in mmengine's root registries, so
that mmdet, mmseg and mmdet3d configs (whose registries are children of the root) all
build them from ``custom_imports=dict(imports=['plugin'])``.
"""
from . import engine, models  # noqa: F401  (imported for registration)
from . import evaluation  # noqa: F401
from .version import __version__

__all__ = ['__version__']
