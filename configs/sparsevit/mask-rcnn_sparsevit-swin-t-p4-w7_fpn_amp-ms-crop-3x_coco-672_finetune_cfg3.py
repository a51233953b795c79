# As *_finetune_cfg1.py, with the paper's searched configuration cfg3 (authors' sparsevit_cfg3_33ms.py).
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_finetune_cfg1.py'

model = dict(backbone=dict(pruning_ratios='cfg3'))
