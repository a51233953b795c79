# cfg2 sparse all the way: the FPN and the RPN head compute only the windows the backbone kept
# (docs/sparse_all_the_way.md); the RoI heads are mmdet's. Same weights as the cfg2 config.
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='SparseMaskRCNN',
    # A skipped tile's FPN output is its summed laterals, which the RoI heads read (the demo: docs/demo.md).
    neck=dict(type='SparseFPN', fill_skipped='laterals'),
    rpn_head=dict(type='SparseRPNHead'))
