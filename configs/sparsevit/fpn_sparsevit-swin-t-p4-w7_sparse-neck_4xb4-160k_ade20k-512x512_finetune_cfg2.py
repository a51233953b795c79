# Semantic FPN fine-tuned at cfg2 with the FPN computing only the windows the backbone kept
# (docs/sparse_all_the_way.md). The decode head is mmseg's and labels every pixel, the skipped ones from their
# summed laterals: fine-tuned so on the demo's shapes, a small segmentor kept 0.41 mIoU at ratio 0.5 against 0.29
# with the coarser level and 0.31 with zero (configs/demo/fpn_sparsevit-swin-mini_sparse-neck_saa_demo-shapes.py).
_base_ = './fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512_finetune_cfg2.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_encoder_decoder'],
                      allow_failed_imports=False)

model = dict(type='SparseEncoderDecoder', neck=dict(type='SparseFPN', fill_skipped='laterals'))
