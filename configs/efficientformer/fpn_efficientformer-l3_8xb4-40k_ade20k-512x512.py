# Semantic FPN, EfficientFormer-L3 backbone, ADE20K 512x512, 40k iterations (the authors' setting).
_base_ = './_base_/fpn_efficientformer_8xb4-40k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='l3'),
    neck=dict(in_channels=[64, 128, 320, 512]))
