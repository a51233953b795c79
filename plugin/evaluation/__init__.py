"""Evaluation metrics.

``KittiMonoMetric`` (mmdet3d's KITTI metric, also on a CPU) lives in
``plugin.evaluation.kitti_mono_metric``, which a config lists in ``custom_imports`` as the KITTI
mono-3D configs do: it needs mmdet3d, whose evaluation package (with the nuScenes and Lyft SDKs) takes
seconds to import, which ``import plugin`` does not pay.
"""
