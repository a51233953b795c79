# Mask R-CNN, EfficientFormer-L3 backbone, COCO 1x (the authors' setting).
_base_ = './_base_/mask-rcnn_efficientformer_fpn_1x_coco.py'

model = dict(
    backbone=dict(arch='l3'),
    neck=dict(in_channels=[64, 128, 320, 512]))
