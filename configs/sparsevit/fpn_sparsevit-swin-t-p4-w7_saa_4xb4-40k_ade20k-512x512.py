# Sparsity-aware adaptation (SAA) of Semantic FPN: from the dense model, train 40k iterations at AdamW
# lr 1e-5 under a new random layer-wise sparsity every iteration (the detector's recipe, 1/4 of the
# dense schedule). Validation runs dense.
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512.py'

# Dense start: your run of the base config.
load_from = 'work_dirs/fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512/iter_160000.pth'
model = dict(backbone=dict(init_cfg=None))

custom_hooks = [
    dict(type='SparsityAwareAdaptationHook',
         choices=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
         eval_pruning_ratios=0.)
]

max_iters = 40000
train_cfg = dict(max_iters=max_iters, val_interval=4000)
param_scheduler = [dict(type='PolyLR', eta_min=0., power=0.9, begin=0, end=max_iters, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-5))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=4000, max_keep_ckpts=1))
