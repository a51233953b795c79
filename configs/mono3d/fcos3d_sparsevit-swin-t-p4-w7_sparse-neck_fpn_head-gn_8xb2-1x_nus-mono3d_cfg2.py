# FCOS3D at cfg2 sparse all the way: the FPN and the head (towers, branches, GroupNorm statistics over
# the kept pixels, the deformable last conv) compute only the windows the backbone kept
# (docs/sparse_all_the_way.md).
_base_ = './fcos3d_sparsevit-swin-t-p4-w7_fpn_head-gn_8xb2-1x_nus-mono3d_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_fcos_mono3d'], allow_failed_imports=False)

model = dict(
    type='SparseFCOSMono3D',
    # Skipped tiles take their summed laterals, as in the Mask R-CNN configs (measured there, on the demo).
    neck=dict(type='SparseFPN', fill_skipped='laterals'),
    bbox_head=dict(type='SparseFCOSMono3DHead'))
