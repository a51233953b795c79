# Semantic FPN with DynamicViT (DeiT-S, keep ratio rho = 0.7 before blocks 3, 6, 9) on ADE20K
# 512x512: mmseg's Semantic FPN 160k schedule with AdamW as for ViT backbones, and the
# keep-ratio loss added to the segmentor's losses (EncoderDecoderWithBackboneLoss).
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', './_base_/dynamicvit-deit-s.py']
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.encoder_decoder'], allow_failed_imports=False)

model = dict(
    type='EncoderDecoderWithBackboneLoss',
    pretrained=None,  # the base sets a ResNet checkpoint here, which mmseg would hand to the backbone
    backbone={{_base_.dynamicvit_deit_s}},
    neck=dict(in_channels=[96, 192, 384, 384]))
optim_wrapper = {{_base_.vit_optim_wrapper}}
