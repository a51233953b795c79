from . import backbones  # noqa: F401  (imported for registration)
