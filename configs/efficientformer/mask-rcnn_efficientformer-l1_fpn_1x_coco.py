# Mask R-CNN, EfficientFormer-L1 backbone, COCO 1x (the authors' setting).
_base_ = './_base_/mask-rcnn_efficientformer_fpn_1x_coco.py'

model = dict(
    backbone=dict(arch='l1'),
    neck=dict(in_channels=[48, 96, 224, 448]))
