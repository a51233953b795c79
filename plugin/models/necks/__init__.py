"""Necks that compute only the tiles their backbone computed (sparse all the way, docs/sparse_all_the_way.md).

``import plugin`` does not import them: they build on mmdet's modules, which need mmcv's compiled
ops. A config lists ``plugin.models.necks.sparse_fpn`` in ``custom_imports`` (the sparse detectors
of ``plugin.models.detectors`` import it themselves).
"""
