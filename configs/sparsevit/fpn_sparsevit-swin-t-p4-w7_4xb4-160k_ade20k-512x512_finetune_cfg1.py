# Fine-tuning Semantic FPN from the sparsity-aware adapted checkpoint at AdamW lr 1e-5, 160k iterations,
# with the paper's searched configuration cfg1. The paper's three configurations were searched for
# detection; for your own, run tools/search_sparsity.py on the adapted model and use its pruning_ratios.py.
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512.py'

load_from = 'work_dirs/fpn_sparsevit-swin-t-p4-w7_saa_4xb4-40k_ade20k-512x512/iter_40000.pth'
model = dict(backbone=dict(init_cfg=None, pruning_ratios='cfg1'))
param_scheduler = [dict(type='PolyLR', eta_min=0., power=0.9, begin=0, end=160000, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-5))
