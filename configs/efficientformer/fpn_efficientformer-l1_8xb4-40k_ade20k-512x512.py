# Semantic FPN, EfficientFormer-L1 backbone, ADE20K 512x512, 40k iterations (the authors' setting).
_base_ = './_base_/fpn_efficientformer_8xb4-40k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='l1'),
    neck=dict(in_channels=[48, 96, 224, 448]))
