"""Mask R-CNN whose losses include its backbone's (e.g. DynamicViT's ``loss_keep_ratio``)."""
from mmdet.models.detectors import MaskRCNN
from mmengine.registry import MODELS

from .backbone_loss import BackboneLossMixin


@MODELS.register_module()
class MaskRCNNWithBackboneLoss(BackboneLossMixin, MaskRCNN):
    """mmdet's ``MaskRCNN`` (same arguments) plus its backbone's losses (``BackboneLossMixin``)."""
