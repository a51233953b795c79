# Semantic FPN, EfficientFormerV2-S2 backbone, ADE20K 512x512, 40k iterations (the authors' setting).
# Like the authors' V2 dense backbones: BatchNorm frozen in eval mode, no output norms.
_base_ = './_base_/fpn_efficientformer_8xb4-40k_ade20k-512x512.py'

model = dict(
    backbone=dict(type='EfficientFormerV2', arch='s2', drop_path_rate=0.02, norm_eval=True),
    neck=dict(in_channels=[32, 64, 144, 288]))
