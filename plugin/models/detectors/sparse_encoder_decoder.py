"""Semantic FPN (mmseg's EncoderDecoder) whose FPN computes only the windows the backbone kept."""
from mmengine.registry import MODELS
from mmseg.models.segmentors import EncoderDecoder

from ..necks import sparse_fpn  # noqa: F401  (registers SparseFPN)
from ..utils.tile_conv import SparseFeatures
from .sparse import SparseNeckMixin


@MODELS.register_module()
class SparseEncoderDecoder(SparseNeckMixin, EncoderDecoder):
    """mmseg's ``EncoderDecoder`` (same arguments) whose neck (SparseFPN) computes only the tiles the backbone
    computed; its losses include the backbone's. The decode head is mmseg's and predicts every pixel."""

    def extract_feat(self, inputs) -> SparseFeatures:
        return self.extract_sparse_features(inputs)
