"""Evaluation metrics; registered where mmdet3d and the packages its evaluation imports are installed."""
import importlib.util
import warnings

if importlib.util.find_spec('mmdet3d') is not None:
    try:
        from .kitti_mono_metric import KittiMonoMetric, kitti_overlaps_on_cpu, rotated_iou_cpu

        __all__ = ['KittiMonoMetric', 'kitti_overlaps_on_cpu', 'rotated_iou_cpu']
    except ImportError as error:
        # mmdet3d.evaluation imports the nuScenes and Lyft SDKs at start-up; the rest of the plugin works without them.
        warnings.warn(f'KittiMonoMetric is not registered: {error}')
