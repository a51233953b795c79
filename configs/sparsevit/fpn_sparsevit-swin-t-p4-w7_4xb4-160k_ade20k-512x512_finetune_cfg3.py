# As *_finetune_cfg1.py, with the paper's searched configuration cfg3.
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512_finetune_cfg1.py'

model = dict(backbone=dict(pruning_ratios='cfg3'))
