# Semantic FPN on ADE20K with an EfficientFormer-L1-sized supernet: every block a MetaPath
# (MetaBlock or identity), the last two of stage 4 MHSA, three widths per stage. Architecture
# logits train jointly with the weights; GumbelTemperatureHook anneals their temperature.
# Then: tools/build_latency_lut.py --config THIS_FILE ... and tools/slim.py (docs/slimming.md).
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

width_choices = [[32, 40, 48], [64, 80, 96], [160, 192, 224], [320, 384, 448]]
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='EfficientFormerSupernet',
        width_choices=width_choices,
        depths=[3, 2, 6, 4],
        num_vit=2,
        bias_mode='official_dense',
        dense_img_size=512,
        drop_path_rate=0.1,
        temperature=5.0),
    neck=dict(in_channels=[widths[-1] for widths in width_choices]))

# AdamW as in EfficientFormer's segmentation recipe; architecture logits get no weight decay.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'arch_logits': dict(decay_mult=0.)}))
custom_hooks = [dict(type='GumbelTemperatureHook', start=5.0, end=0.5)]
