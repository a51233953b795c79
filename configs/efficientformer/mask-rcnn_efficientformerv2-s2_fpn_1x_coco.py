# Mask R-CNN, EfficientFormerV2-S2 backbone, COCO 1x (the authors' setting).
# Like the authors' V2 dense backbones: BatchNorm frozen in eval mode, no output norms.
_base_ = './_base_/mask-rcnn_efficientformer_fpn_1x_coco.py'

model = dict(
    backbone=dict(type='EfficientFormerV2', arch='s2', drop_path_rate=0.02, norm_eval=True),
    neck=dict(in_channels=[32, 64, 144, 288]))
