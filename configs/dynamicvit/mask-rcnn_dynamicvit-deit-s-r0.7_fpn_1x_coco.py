# Mask R-CNN with DynamicViT (DeiT-S, keep ratio rho = 0.7 before blocks 3, 6, 9) on COCO:
# mmdet's R-50 1x config with the backbone swapped, its simple feature pyramid feeding FPN,
# and the keep-ratio loss added to the detector's losses (MaskRCNNWithBackboneLoss).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.mask_rcnn'], allow_failed_imports=False)

pretrained = 'https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth'
model = dict(
    type='MaskRCNNWithBackboneLoss',
    backbone=dict(
        _delete_=True,
        type='DynamicViT',
        arch='deit-s',
        drop_path_rate=0.1,
        pruning_locs=(3, 6, 9),
        keep_ratio=0.7,
        keep_ratio_loss_weight=2.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 384]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
