# PGD with SparseViT-Swin-T pruned as the paper's second searched configuration ("cfg2").
_base_ = './pgd_sparsevit-swin-t-p4-w7_fpn_head-gn_4xb3-4x_kitti-mono3d.py'

model = dict(backbone=dict(pruning_ratios='cfg2'))
