"""mmseg's EncoderDecoder whose losses include its backbone's (e.g. DynamicViT's ``loss_keep_ratio``)."""
from mmengine.registry import MODELS
from mmseg.models.segmentors import EncoderDecoder

from .backbone_loss import BackboneLossMixin


@MODELS.register_module()
class EncoderDecoderWithBackboneLoss(BackboneLossMixin, EncoderDecoder):
    """mmseg's ``EncoderDecoder`` (same arguments) plus its backbone's losses (``BackboneLossMixin``)."""
