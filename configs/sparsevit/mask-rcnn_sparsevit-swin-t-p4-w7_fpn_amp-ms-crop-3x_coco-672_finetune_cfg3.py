# Fine-tuning with the paper's searched configuration cfg3 (authors' sparsevit_cfg3_33ms.py):
# 36 epochs (3x schedule) at AdamW lr 1e-5, starting from the sparsity-aware adapted checkpoint.
_base_ = './mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg3.py'

load_from = 'work_dirs/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_saa_amp-ms-crop-1x_coco-672/epoch_12.pth'
model = dict(backbone=dict(init_cfg=None))
optim_wrapper = dict(optimizer=dict(lr=1e-5))
