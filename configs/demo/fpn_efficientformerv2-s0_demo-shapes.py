# Demo: Semantic FPN with EfficientFormerV2-S0 trained from scratch on the synthetic shapes
# (ADE20K layout, tools/make_demo_data.py). Label 0 is the background, a class of its own
# (reduce_zero_label=False). Only data, sizes and schedule differ from the ADE20K config.
_base_ = '../efficientformer/fpn_efficientformerv2-s2_8xb4-40k_ade20k-512x512.py'

data_root = 'data/demo/ade/'
metainfo = dict(classes=('background', 'circle', 'square', 'triangle', 'star'),
                palette=[(50, 50, 50), (230, 25, 75), (0, 130, 200), (60, 180, 75), (255, 200, 0)])
image_size = (160, 160)

model = dict(
    backbone=dict(arch='s0', drop_path_rate=0., norm_eval=False, init_cfg=None),
    data_preprocessor=dict(size=image_size),
    neck=dict(in_channels=[32, 48, 96, 176], out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, num_classes=5))

# Transforms and datasets of a task library carry its scope ('mmseg.'), so that they build the same when
# another config inherits this one as effidense::demo/... (plugin/utils/package_data.py).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=False),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=False),
    dict(type='mmseg.PackSegInputs'),
]
dataset = dict(type='mmseg.BaseSegDataset', data_root=data_root, metainfo=metainfo, reduce_zero_label=False,
               img_suffix='.jpg', seg_map_suffix='.png')
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 800
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=0, end=max_iters, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(by_epoch=False, interval=max_iters))
