# Semantic FPN with an EfficientFormer backbone on ADE20K 512x512, as the authors
# train it (segmentation/ in snap-research/EfficientFormer): 40k iterations of
# 8 GPUs x 4 images, AdamW lr 2e-4, weight decay 1e-4, poly decay.
# The leaf configs set the backbone type/arch and the FPN input widths. Start from
# ImageNet weights with init_cfg=dict(type='Pretrained', checkpoint=...) (docs/efficientformer.md).
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        out_indices=(0, 1, 2, 3),
        bias_mode='official_dense',
        dense_img_size=512,
        init_cfg=None))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=0., power=0.9, begin=0, end=40000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000))
