# Demo: sparsity-aware adaptation of the demo detector (a new random layer-wise sparsity every
# iteration), continuing from its dense training (tools/demo.py sets load_from). Every test also
# measures the object coverage of the kept windows, as the dense config's.
_base_ = './mask-rcnn_sparsevit-swin-mini_demo-shapes.py'

custom_hooks = [dict(type='SparsityAwareAdaptationHook', eval_pruning_ratios=0.),
                dict(type='ObjectCoverageHook', ground_truth='masks')]

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
optim_wrapper = dict(optimizer=dict(lr=2e-4))
default_hooks = dict(checkpoint=dict(interval=max_iters))
# At 160x160 the last stage is one window and stage 2 four: a drawn ratio > 0 (0.8 in stage 2) keeps none of them,
# the block is skipped and its parameters get no gradient, which DDP must be told about.
find_unused_parameters = True
