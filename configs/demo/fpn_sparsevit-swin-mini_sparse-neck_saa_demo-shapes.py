# The adapted small SparseViT-Swin Semantic FPN fine-tuned sparse all the way (the FPN computes only the windows
# the backbone kept), with the adaptation's schedule and random sparsities; skipped tiles take their summed laterals
# (`--cfg-options model.neck.fill_skipped=coarser` or `=zero` for the others).
_base_ = './fpn_sparsevit-swin-mini_saa_demo-shapes.py'
custom_imports = dict(imports=['plugin', 'plugin.models.detectors.sparse_encoder_decoder'],
                      allow_failed_imports=False)

load_from = 'work_dirs/fpn_sparsevit-swin-mini_saa_demo-shapes/iter_200.pth'
model = dict(type='SparseEncoderDecoder', neck=dict(type='SparseFPN', fill_skipped='laterals'))
