# The learned window scorer at cfg2, sparse all the way (FPN and RPN head on the kept windows): fine-tunes the
# learned-scorer cfg2 detector (set load_from to its checkpoint) with the scorer frozen, which then ranks in
# training as at inference, so the FPN and RPN train on the windows inference keeps. (A scorer in training
# runs every window, where the FPN and RPN would run densely.) The frozen scorers take no gradient, so no
# parameter is unused.
_base_ = './mask-rcnn_sparsevit-swin-t-learned-scorer_fpn_amp-ms-crop-3x_coco-672_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    backbone=dict(freeze_scorer=True),
    neck=dict(type='SparseFPN', fill_skipped='laterals'),
    rpn_head=dict(type='SparseRPNHead'))
find_unused_parameters = False
