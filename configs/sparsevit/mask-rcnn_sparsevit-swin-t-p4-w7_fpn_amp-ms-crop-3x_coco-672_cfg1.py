# The paper's first searched configuration (authors' "cfg1", 42 ms on their GPU).
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672.py'

model = dict(backbone=dict(pruning_ratios='cfg1'))
