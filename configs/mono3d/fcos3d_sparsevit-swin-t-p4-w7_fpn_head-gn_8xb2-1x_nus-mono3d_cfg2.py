# FCOS3D with SparseViT-Swin-T pruned as the paper's second searched configuration ("cfg2").
_base_ = './fcos3d_sparsevit-swin-t-p4-w7_fpn_head-gn_8xb2-1x_nus-mono3d.py'

model = dict(backbone=dict(pruning_ratios='cfg2'))
