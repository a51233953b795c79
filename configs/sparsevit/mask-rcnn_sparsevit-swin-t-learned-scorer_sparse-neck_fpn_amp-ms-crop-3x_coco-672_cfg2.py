# The learned window scorer at cfg2, sparse all the way (FPN and RPN head on the kept windows). In training
# the learned scorer runs every window (soft decisions), so the FPN and RPN run densely there; inference
# is sparse all the way. The keep-ratio loss joins the detector's losses.
_base_ = './mask-rcnn_sparsevit-swin-t-learned-scorer_fpn_amp-ms-crop-3x_coco-672_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    neck=dict(type='SparseFPN', fill_skipped='coarser'),
    rpn_head=dict(type='SparseRPNHead'))
