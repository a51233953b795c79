# Semantic FPN, EfficientFormer-L7 backbone, ADE20K 512x512, 40k iterations (the authors' setting).
_base_ = './_base_/fpn_efficientformer_8xb4-40k_ade20k-512x512.py'

model = dict(
    # The authors' L7 dense backbones start LayerScale at 1e-6 (only matters without ImageNet weights).
    backbone=dict(arch='l7', layer_scale_init_value=1e-6),
    neck=dict(in_channels=[96, 192, 384, 768]))
