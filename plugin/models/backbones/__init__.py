"""Backbones, one file per architecture; importing this module registers them."""
from .sparsevit_swin import SparseViTSwin

__all__ = ['SparseViTSwin']
