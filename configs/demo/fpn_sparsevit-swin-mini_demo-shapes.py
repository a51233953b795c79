# Semantic FPN with the demo detector's small SparseViT-Swin, trained from scratch on the synthetic shapes: the
# segmentor on which SparseFPN's fill of skipped tiles was chosen for Semantic FPN (docs/sparse_all_the_way.md).
# Not part of `make demo`. Data and optimizer as the demo's EfficientFormer segmentor, a longer schedule.
_base_ = './fpn_efficientformerv2-s0_demo-shapes.py'

model = dict(
    backbone=dict(_delete_=True, type='SparseViTSwin', embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                  window_size=5, drop_path_rate=0.1, out_indices=(0, 1, 2, 3), pruning_ratios=0.,
                  convert_weights=False, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256]))

max_iters = 2000
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=0, end=max_iters, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=max_iters))
randomness = dict(seed=0)
