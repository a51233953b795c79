# SparseViT-Swin-T with a learned window scorer (DynamicViT-style predictor per stage, hard Gumbel
# decisions in training) at the paper's cfg2 ratios; its keep-ratio loss joins the detector's losses.
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.mask_rcnn'], allow_failed_imports=False)

model = dict(type='MaskRCNNWithBackboneLoss', backbone=dict(scorer='learned', keep_ratio_loss_weight=2.0))
# Stages 1 and 3 prune nothing at cfg2, so their window scorers never run: DDP must expect parameters without gradient.
find_unused_parameters = True
