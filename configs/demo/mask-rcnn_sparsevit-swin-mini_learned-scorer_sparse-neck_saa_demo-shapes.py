# Demo: the detector adapted with the learned window scorer, sparse all the way (see the L2 scorer's
# *_sparse-neck_saa_demo-shapes.py). In training the learned scorer runs every window, so the FPN and RPN
# run densely there; the demo tests this config from the adaptation's checkpoint.
_base_ = './mask-rcnn_sparsevit-swin-mini_learned-scorer_saa_demo-shapes.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    neck=dict(type='SparseFPN', fill_skipped='coarser'),
    rpn_head=dict(type='SparseRPNHead'))
