# Demo: the detector adapted with the L2 scorer, sparse all the way: the FPN and the RPN head compute only
# the windows the backbone kept (docs/sparse_all_the_way.md). The demo tests it from the adaptation's
# checkpoint, then fine-tunes it sparse all the way with the adaptation's schedule and random sparsities.
_base_ = './mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    neck=dict(type='SparseFPN', fill_skipped='laterals'),
    rpn_head=dict(type='SparseRPNHead'))
