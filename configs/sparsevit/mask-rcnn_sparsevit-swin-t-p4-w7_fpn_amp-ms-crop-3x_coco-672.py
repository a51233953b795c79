# The paper's detection setting: Swin-T Mask R-CNN, multi-scale crop 3x schedule,
# AdamW, mixed precision, evaluated at 672x672 (dense here; see the *_cfg{1,2,3} configs).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

model = dict(backbone=dict(type='SparseViTSwin', pruning_ratios=0.))

# Transforms and datasets of a task library carry its scope ('mmdet.'), so that they build the same when
# another config inherits this one as effidense::sparsevit/... (plugin/utils/package_data.py).
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='mmdet.Resize', scale=(672, 672), keep_ratio=False),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
