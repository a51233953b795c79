# What the DynamicViT configs share, as variables (the task base configs define `model` and `optim_wrapper`
# themselves, and mmengine allows a key in one base only): the backbone and DeiT's AdamW recipe.
#   model = dict(backbone={{_base_.dynamicvit_deit_s}}, ...);  optim_wrapper = {{_base_.vit_optim_wrapper}}

# DeiT-S pruned to rho = 0.7 before blocks 3, 6 and 9; its simple feature pyramid feeds the FPN.
dynamicvit_deit_s = dict(
    _delete_=True,
    type='DynamicViT',
    arch='deit-s',
    drop_path_rate=0.1,
    pruning_locs=(3, 6, 9),
    keep_ratio=0.7,
    keep_ratio_loss_weight=2.0,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth'))

# AdamW without weight decay on the position embedding, the class token and the norms.
vit_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
