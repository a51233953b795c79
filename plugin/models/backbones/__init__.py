"""Backbones, one file per architecture; importing this module registers them."""
from .dynamic_vit import DynamicViT
from .efficientformer import EfficientFormer
from .efficientformer_supernet import EfficientFormerSupernet
from .efficientformer_v2 import EfficientFormerV2
from .sparsevit_swin import SparseViTSwin

__all__ = ['DynamicViT', 'EfficientFormer', 'EfficientFormerSupernet', 'EfficientFormerV2', 'SparseViTSwin']
