"""Dense heads that compute only the tiles their backbone computed (sparse all the way, docs/sparse_all_the_way.md).

``import plugin`` does not import them: they build on mmdet's and mmdet3d's heads, which need mmcv's
compiled ops. A config lists ``plugin.models.dense_heads.sparse_rpn_head`` or
``plugin.models.dense_heads.sparse_mono3d_heads`` in ``custom_imports`` (the sparse detectors of
``plugin.models.detectors`` import theirs).
"""
