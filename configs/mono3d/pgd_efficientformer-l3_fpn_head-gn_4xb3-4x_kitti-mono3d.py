# PGD on KITTI (monocular) with EfficientFormer-L3: mmdet3d's ResNet-101 config with the
# backbone, its input normalisation and the neck's input widths replaced, and a KITTI metric
# that also evaluates without a CUDA GPU.
_base_ = 'mmdet3d::pgd/pgd_r101-caffe_fpn_head-gn_4xb3-4x_kitti-mono3d.py'
custom_imports = dict(imports=['plugin', 'plugin.evaluation.kitti_mono_metric'], allow_failed_imports=False)

model = dict(
    # EfficientFormer was trained on RGB images with ImageNet statistics.
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        arch='l3',
        out_indices=(0, 1, 2, 3),
        # As configs/efficientformer/: start from ImageNet weights with
        # init_cfg=dict(type='Pretrained', checkpoint=...) (docs/efficientformer.md).
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 320, 512]))

val_evaluator = dict(type='KittiMonoMetric')
test_evaluator = val_evaluator
