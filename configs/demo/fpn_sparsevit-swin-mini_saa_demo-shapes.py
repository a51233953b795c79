# Sparsity-aware adaptation of the small SparseViT-Swin Semantic FPN (a new random layer-wise sparsity every
# iteration), from its dense training, with the demo detector's adaptation schedule.
_base_ = './fpn_sparsevit-swin-mini_demo-shapes.py'

load_from = 'work_dirs/fpn_sparsevit-swin-mini_demo-shapes/iter_2000.pth'
custom_hooks = [dict(type='SparsityAwareAdaptationHook', eval_pruning_ratios=0.)]

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
optim_wrapper = dict(optimizer=dict(lr=2e-4))
default_hooks = dict(checkpoint=dict(interval=max_iters))
# At 160x160 the last stage is one window: a drawn ratio > 0 keeps none of it and its blocks get no gradient.
find_unused_parameters = True
