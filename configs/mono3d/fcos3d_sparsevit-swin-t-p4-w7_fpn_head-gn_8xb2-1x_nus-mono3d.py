# FCOS3D on nuScenes (monocular) with SparseViT-Swin-T, dense (pruning_ratios=0): mmdet3d's
# ResNet-101 config with the backbone, its input normalisation and the neck's input widths
# replaced. The head keeps its deformable last conv (mmcv runs it on the CPU too).
_base_ = 'mmdet3d::fcos3d/fcos3d_r101-caffe-dcn_fpn_head-gn_8xb2-1x_nus-mono3d.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

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
        # FCOS3D's FPN starts at stride 8: only the levels it reads, as mmdet's Swin RetinaNet.
        out_indices=(1, 2, 3),
        convert_weights=True,
        pruning_ratios=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768], start_level=0))
