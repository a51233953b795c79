# Demo: the detector adapted with the learned scorer, sparse all the way (see the L2 scorer's
# *_sparse-neck_saa_demo-shapes.py). The demo tests it from the adaptation's checkpoint, then fine-tunes it
# with the same random sparsities and the scorer frozen: a frozen scorer ranks in training as at inference,
# so the FPN and RPN train on the windows inference keeps (a scorer in training runs every window).
_base_ = './mask-rcnn_sparsevit-swin-mini_learned-scorer_saa_demo-shapes.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    backbone=dict(freeze_scorer=True),
    neck=dict(type='SparseFPN', fill_skipped='laterals'),
    rpn_head=dict(type='SparseRPNHead'))
