# Sparsity-aware adaptation (SAA) of the paper's detector: from a dense Swin-T Mask R-CNN, train
# 12 epochs (1x) at AdamW lr 1e-5 under a new random layer-wise sparsity every iteration, as the
# authors' configs/sparsevit/mask_rcnn_sparsevit_saa.py. Validation runs dense.
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672.py'

# Dense start: mmdet's released Swin-T Mask R-CNN (AMP, multi-scale crop, 3x), whose keys SparseViTSwin
# shares; or your own dense run, e.g.
# 'work_dirs/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672/epoch_36.pth'.
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco/mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco_20210908_165006-90a4008c.pth'  # noqa
model = dict(backbone=dict(init_cfg=None))

custom_hooks = [
    dict(type='SparsityAwareAdaptationHook',
         choices=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
         eval_pruning_ratios=0.)
]

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-5))
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))
