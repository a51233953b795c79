# Mask R-CNN with DynamicViT (DeiT-S, keep ratio rho = 0.7 before blocks 3, 6, 9) on COCO:
# mmdet's R-50 1x config with the backbone swapped, its simple feature pyramid feeding FPN,
# and the keep-ratio loss added to the detector's losses (MaskRCNNWithBackboneLoss).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/dynamicvit-deit-s.py']
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.mask_rcnn'], allow_failed_imports=False)

model = dict(
    type='MaskRCNNWithBackboneLoss',
    backbone={{_base_.dynamicvit_deit_s}},
    neck=dict(in_channels=[96, 192, 384, 384]))
optim_wrapper = {{_base_.vit_optim_wrapper}}
