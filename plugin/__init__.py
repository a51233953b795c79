"""EffiDense: efficient vision-transformer backbones for OpenMMLab dense prediction.

Importing this package registers every module once, in mmengine's root registries, so
that mmdet, mmseg and mmdet3d configs (whose registries are children of the root) all
build them from ``custom_imports=dict(imports=['plugin'])``. It also lets torch's
weights-only loader read mmengine's runner checkpoints (``plugin.utils.safe_globals``),
makes mmengine's FLOP counter count fused attention, and registers the ``effidense::`` config
scope of the configs the package ships (``plugin.utils.package_data``).
"""
from . import (  # noqa: F401  (imported for registration)
    engine,
    evaluation,  # noqa: F401
    models,
)
from .utils.package_data import register_config_scope
from .utils.profiling import register_attention_with_mmengine_counter
from .utils.safe_globals import allow_mmengine_checkpoint_globals
from .version import __version__

allow_mmengine_checkpoint_globals()
register_attention_with_mmengine_counter()
register_config_scope()

__all__ = ['__version__']
