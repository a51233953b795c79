# Mask R-CNN, EfficientFormer-L7 backbone, COCO 1x (the authors' setting).
_base_ = './_base_/mask-rcnn_efficientformer_fpn_1x_coco.py'

model = dict(
    # The authors' L7 dense backbones start LayerScale at 1e-6 (only matters without ImageNet weights).
    backbone=dict(arch='l7', layer_scale_init_value=1e-6),
    neck=dict(in_channels=[96, 192, 384, 768]))
