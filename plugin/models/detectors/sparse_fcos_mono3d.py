"""FCOS3D/PGD (mmdet3d's FCOSMono3D) computed sparse all the way: backbone, FPN and head on the kept windows."""
from mmdet3d.models.detectors import FCOSMono3D
from mmengine.registry import MODELS

from ..dense_heads import sparse_mono3d_heads  # noqa: F401  (registers SparseFCOSMono3DHead, SparsePGDHead)
from ..necks import sparse_fpn  # noqa: F401  (registers SparseFPN)
from ..utils.tile_conv import SparseFeatures
from .sparse import SparseNeckMixin


@MODELS.register_module()
class SparseFCOSMono3D(SparseNeckMixin, FCOSMono3D):
    """mmdet3d's ``FCOSMono3D`` (same arguments) whose neck (SparseFPN) and head (SparseFCOSMono3DHead or
    SparsePGDHead) compute only the tiles the backbone computed; its losses include the backbone's."""

    def extract_feat(self, batch_inputs_dict: dict) -> SparseFeatures:
        return self.extract_sparse_features(batch_inputs_dict['imgs'])
