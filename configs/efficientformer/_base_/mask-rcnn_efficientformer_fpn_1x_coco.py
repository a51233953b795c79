# Mask R-CNN with an EfficientFormer backbone on COCO, 1x schedule, as the authors
# train it (detection/ in snap-research/EfficientFormer): mmdet's R-50 recipe with
# AdamW, lr 2e-4, weight decay 0.05, batch 16 (8 GPUs x 2 images).
# The leaf configs set the backbone type/arch and the FPN input widths. Start from
# ImageNet weights with init_cfg=dict(type='Pretrained', checkpoint=...) (docs/efficientformer.md).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        out_indices=(0, 1, 2, 3),
        bias_mode='official_dense',
        dense_img_size=800,
        init_cfg=None))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))
