# PGD on KITTI (monocular) with SparseViT-Swin-T, dense (pruning_ratios=0): mmdet3d's
# ResNet-101 config with the backbone, its input normalisation and the neck's input widths
# replaced, and a KITTI metric that also evaluates without a CUDA GPU.
_base_ = 'mmdet3d::pgd/pgd_r101-caffe_fpn_head-gn_4xb3-4x_kitti-mono3d.py'
custom_imports = dict(imports=['plugin', 'plugin.evaluation.kitti_mono_metric'], allow_failed_imports=False)

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa
model = dict(
    # The Swin checkpoint was trained on RGB images with ImageNet statistics.
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='SparseViTSwin',
        arch='tiny',
        window_size=7,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        convert_weights=True,
        pruning_ratios=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

val_evaluator = dict(type='KittiMonoMetric')
test_evaluator = val_evaluator
