"""Mask R-CNN computed sparse all the way: backbone, FPN and RPN on the windows the backbone kept."""
from mmdet.models.detectors import MaskRCNN
from mmengine.registry import MODELS

from ..dense_heads import sparse_rpn_head  # noqa: F401  (registers SparseRPNHead)
from ..necks import sparse_fpn  # noqa: F401  (registers SparseFPN)
from ..utils.tile_conv import SparseFeatures
from .sparse import SparseNeckMixin


@MODELS.register_module()
class SparseMaskRCNN(SparseNeckMixin, MaskRCNN):
    """mmdet's ``MaskRCNN`` (same arguments) whose neck (SparseFPN) and RPN head (SparseRPNHead) compute only the
    tiles the backbone computed; its losses include the backbone's (as ``MaskRCNNWithBackboneLoss``). The RoI
    heads are mmdet's: they run on the proposals, which come from computed anchors only."""

    def extract_feat(self, batch_inputs) -> SparseFeatures:
        return self.extract_sparse_features(batch_inputs)
