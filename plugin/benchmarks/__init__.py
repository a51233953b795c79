"""Benchmark suites of ``tools/benchmark.py``: each adds its arguments and returns table rows.

A suite module has ``add_arguments(parser)`` and ``run(args) -> list of dicts``; every ratio in
its rows (speedup, MACs ratio, eff) comes from measurements of the same run.
"""
SUITES = ('dynamicvit', 'efficientformer', 'mono3d', 'onnxruntime', 'search', 'sparse_heads', 'sparsevit', 'whole')
