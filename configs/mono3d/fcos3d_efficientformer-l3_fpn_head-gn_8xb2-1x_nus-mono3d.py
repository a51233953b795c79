# FCOS3D on nuScenes (monocular) with EfficientFormer-L3: mmdet3d's ResNet-101 config with the
# backbone, its input normalisation and the neck's input widths replaced. The head keeps its
# deformable last conv (mmcv runs it on the CPU too).
_base_ = 'mmdet3d::fcos3d/fcos3d_r101-caffe-dcn_fpn_head-gn_8xb2-1x_nus-mono3d.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

model = dict(
    # EfficientFormer was trained on RGB images with ImageNet statistics.
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='EfficientFormer',
        arch='l3',
        # FCOS3D's FPN starts at stride 8: only the levels it reads.
        out_indices=(1, 2, 3),
        # As configs/efficientformer/: start from ImageNet weights with
        # init_cfg=dict(type='Pretrained', checkpoint=...) (docs/efficientformer.md).
        init_cfg=None),
    neck=dict(in_channels=[128, 320, 512], start_level=0))
