# Mask R-CNN with SparseViT-Swin-T on COCO, starting dense (pruning_ratios=0):
# mmdet's Swin-T 1x config with the backbone swapped; loads the same Swin checkpoint.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin'], allow_failed_imports=False)

model = dict(backbone=dict(type='SparseViTSwin', pruning_ratios=0.))
