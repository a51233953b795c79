# Semantic FPN with SparseViT-Swin-T and a learned window scorer (DynamicViT-style predictor per stage);
# its keep-ratio loss joins the segmentor's losses.
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.encoder_decoder'], allow_failed_imports=False)

model = dict(
    type='EncoderDecoderWithBackboneLoss',
    backbone=dict(scorer='learned', keep_ratio_loss_weight=2.0,
                  pruning_ratios='cfg2'))
# Stages 1 and 3 prune nothing at cfg2, so their window scorers never run: DDP must expect parameters without gradient.
find_unused_parameters = True
