# Semantic FPN fine-tuned at cfg2 with the FPN computing only the windows the backbone kept
# (docs/sparse_all_the_way.md); the decode head is mmseg's and predicts every pixel, so skipped tiles take
# the coarser FPN level (not measured for Semantic FPN; the demo's Mask R-CNN scored best with 'laterals').
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512_finetune_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_encoder_decoder'],
                      allow_failed_imports=False)

model = dict(type='SparseEncoderDecoder', neck=dict(type='SparseFPN', fill_skipped='coarser'))
