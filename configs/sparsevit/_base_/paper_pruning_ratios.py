# The paper's three searched layer-wise configurations of SparseViT-Swin-T (authors' sparsevit_cfg1_42ms.py,
# sparsevit_cfg2_35ms.py, sparsevit_cfg3_33ms.py): one list of per-block ratios per stage.
# Written only here; configs take one with `_base_` and `{{_base_.paper_cfg2}}`, tools/benchmark.py reads this file.
paper_cfg1 = [[0.3, 0.3], [0., 0.], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0., 0.]]
paper_cfg2 = [[0.6, 0.6], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]]
paper_cfg3 = [[0.7, 0.7], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]]
