"""Detectors and segmentors that add their backbone's own losses (DynamicViT's keep-ratio loss) to the losses dict.

``import plugin`` does not import the subclasses: mmdet's detectors need mmcv's
compiled ops, which a machine with mmcv-lite lacks. A config that uses one lists
its module in ``custom_imports``: ``plugin.models.detectors.mask_rcnn`` or
``plugin.models.detectors.encoder_decoder``.
"""
from .backbone_loss import BackboneLossMixin

__all__ = ['BackboneLossMixin']
