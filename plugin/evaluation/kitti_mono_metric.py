"""mmdet3d's KITTI metric, runnable on a machine without a CUDA GPU.

mmdet3d's KITTI protocol (``mmdet3d/evaluation/functional/kitti_utils/eval.py``)
computes bird's-eye and 3D overlaps with ``rotate_iou_gpu_eval``, a numba CUDA
kernel whose module cannot even be imported where numba finds no CUDA driver.
``rotated_iou_cpu`` returns the same overlaps from mmcv's compiled CPU operator
``box_iou_rotated``, whose ``clockwise=False`` corner convention is the kernel's;
``KittiMonoMetric`` evaluates with it whenever CUDA is unavailable and is
otherwise mmdet3d's metric.
"""
import contextlib
import sys
import types
from collections.abc import Iterator

import numpy as np
import torch
from mmcv.ops import box_iou_rotated
from mmdet3d.evaluation.metrics import KittiMetric
from mmengine.registry import METRICS
from numba import cuda

GPU_KERNEL_MODULE = 'mmdet3d.evaluation.functional.kitti_utils.rotate_iou'
IOU_CRITERIA = (-1, 0, 1, 2)
IOU_DEVICES = ('auto', 'cuda', 'cpu')


def rotated_iou_cpu(boxes: np.ndarray, query_boxes: np.ndarray, criterion: int = -1) -> np.ndarray:
    """CPU twin of mmdet3d's ``rotate_iou_gpu_eval``: same arguments, same ``(N, K)`` float32 result.

    Boxes are bird's-eye ``(x, z, size_x, size_z, ry)`` rows of KITTI's camera frame.
    ``criterion`` picks what entry ``[n, k]`` holds, as in the kernel: -1 the IoU,
    0 the intersection over the area of ``query_boxes[k]``, 1 the intersection over
    the area of ``boxes[n]``, 2 the intersection area itself.
    """
    if criterion not in IOU_CRITERIA:
        raise ValueError(f'criterion must be one of {IOU_CRITERIA}, got {criterion!r}')
    boxes = torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 5))
    query_boxes = torch.from_numpy(np.asarray(query_boxes, dtype=np.float32).reshape(-1, 5))
    if len(boxes) == 0 or len(query_boxes) == 0:
        return np.zeros((len(boxes), len(query_boxes)), dtype=np.float32)
    if criterion == -1:
        return box_iou_rotated(boxes, query_boxes, mode='iou', clockwise=False).numpy()
    box_areas = boxes[:, 2] * boxes[:, 3]
    # mmcv's 'iof' divides the intersection by the area of its first argument.
    intersections = box_iou_rotated(boxes, query_boxes, mode='iof', clockwise=False) * box_areas[:, None]
    if criterion == 0:
        return (intersections / (query_boxes[:, 2] * query_boxes[:, 3])[None]).numpy()
    if criterion == 1:
        return (intersections / box_areas[:, None]).numpy()
    return intersections.numpy()


@contextlib.contextmanager
def kitti_overlaps_on_cpu() -> Iterator[None]:
    """Within the block, mmdet3d's KITTI evaluation computes rotated overlaps with ``rotated_iou_cpu``.

    ``eval.py`` imports ``rotate_iou_gpu_eval`` from ``GPU_KERNEL_MODULE`` inside
    every call, and importing that module compiles CUDA kernels; a stand-in
    module in ``sys.modules`` answers those imports without touching CUDA.
    """
    stand_in = types.ModuleType(GPU_KERNEL_MODULE, 'CPU stand-in installed by plugin.evaluation.kitti_overlaps_on_cpu')
    stand_in.rotate_iou_gpu_eval = rotated_iou_cpu
    replaced = sys.modules.get(GPU_KERNEL_MODULE)
    sys.modules[GPU_KERNEL_MODULE] = stand_in
    try:
        yield
    finally:
        if replaced is None:
            del sys.modules[GPU_KERNEL_MODULE]
        else:
            sys.modules[GPU_KERNEL_MODULE] = replaced


@METRICS.register_module()
class KittiMonoMetric(KittiMetric):
    """mmdet3d's ``KittiMetric`` that also runs where numba finds no CUDA GPU.

    Args:
        iou_device (str): where the rotated overlaps are computed: 'cuda'
            (mmdet3d's numba kernel), 'cpu' (``rotated_iou_cpu``) or 'auto'
            (CUDA when numba finds a GPU, else the CPU).
        The other arguments are those of ``KittiMetric``.
    """

    def __init__(self, *args, iou_device: str = 'auto', **kwargs) -> None:
        if iou_device not in IOU_DEVICES:
            raise ValueError(f'iou_device must be one of {IOU_DEVICES}, got {iou_device!r}')
        super().__init__(*args, **kwargs)
        self.iou_device = iou_device

    def uses_cpu_iou(self) -> bool:
        return self.iou_device == 'cpu' or (self.iou_device == 'auto' and not cuda.is_available())

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        with kitti_overlaps_on_cpu() if self.uses_cpu_iou() else contextlib.nullcontext():
            return super().compute_metrics(results)
