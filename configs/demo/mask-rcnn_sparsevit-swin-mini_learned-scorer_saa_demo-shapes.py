# Demo: the same adaptation as the L2 scorer's (same start, schedule and random sparsities), with
# SparseViTSwin's learned window scorer (scorer='learned'): a DynamicViT-style predictor per stage
# ranks the windows, trained through nested straight-through decisions and the keep-ratio loss,
# which MaskRCNNWithBackboneLoss adds to the detector's losses. The new predictors start from
# scratch while the rest starts trained, so they learn at a higher rate.
_base_ = './mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.mask_rcnn'], allow_failed_imports=False)

model = dict(type='MaskRCNNWithBackboneLoss', backbone=dict(scorer='learned', keep_ratio_loss_weight=2.0))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'window_scorer': dict(lr_mult=10.0)}))
