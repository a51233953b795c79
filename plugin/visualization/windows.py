"""Pictures of the windows a SparseViT backbone kept (the paper's Figure 1) next to the model's predictions.

Each stage's panel shows one block: the stage's last *unshifted* block, i.e.
the sparsest set of windows on the regular grid (later blocks of a grid run a
prefix of the same ranking, so earlier blocks keep a superset). Pruned
windows are dimmed and the regular window grid is drawn over the image.
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..models.utils.window_ops import build_window_grid, padded_shape

PRUNED_BRIGHTNESS = 0.25


@dataclasses.dataclass
class StageWindows:
    """The kept windows of one block of a stage, as a mask over the backbone's input pixels.

    mask: ``(H_in, W_in)`` True where the pixel lies in a kept window.
    window_pixels: side of a window in input pixels (window size x stage stride).
    """
    stage: int
    block: int
    depth: int
    ratio: float
    kept: int
    total: int
    mask: np.ndarray
    window_pixels: int


def stage_strides(backbone: nn.Module) -> List[int]:
    """Input pixels per token side at every stage, from the patch embedding and merging strides."""
    stride = backbone.patch_embed.projection.stride[0]
    strides = []
    for stage in backbone.stages:
        strides.append(stride)
        if stage.downsample is not None:
            stride *= stage.downsample.sampler.stride[0]
    return strides


def kept_window_masks(backbone: nn.Module, input_hw: Sequence[int], image_index: int = 0) -> List[StageWindows]:
    """Per stage, the kept windows of its last unshifted block in the backbone's last forward pass.

    ``input_hw`` is the (H, W) of the tensor that pass received; ``image_index`` picks the image of the batch.
    """
    if not backbone.stage_hw_shapes:
        raise RuntimeError('the backbone has not run yet: call it (or the model) on the image first')
    panels = []
    for index, (stage, stride) in enumerate(zip(backbone.stages, stage_strides(backbone))):
        hw_shape = backbone.stage_hw_shapes[index]
        block = max(j for j, b in enumerate(stage.blocks) if b.shift_size == 0)
        grid = build_window_grid(tuple(hw_shape), stage.window_size, 0, torch.device('cpu'))
        total = grid.token_index.shape[0]
        kept = backbone.kept_windows[index][block]
        windows = torch.arange(total) if kept is None else kept[image_index].cpu()
        height, width = hw_shape
        Hp, Wp = padded_shape(hw_shape, stage.window_size)
        token_mask = torch.zeros(Hp * Wp, dtype=torch.bool)
        token_mask[grid.token_index[windows].flatten()] = True
        token_mask = token_mask.view(Hp, Wp)[:height, :width].numpy()
        pixel_mask = token_mask.repeat(stride, axis=0).repeat(stride, axis=1)[:input_hw[0], :input_hw[1]]
        panels.append(StageWindows(stage=index, block=block, depth=len(stage.blocks),
                                   ratio=backbone.pruning_ratios[index][block], kept=len(windows), total=total,
                                   mask=pixel_mask, window_pixels=stage.window_size * stride))
    return panels


def _to_image_frame(mask: np.ndarray, img_shape: Sequence[int], image_hw: Sequence[int]) -> np.ndarray:
    """Crop the input-pixel mask to the resized image (no padding) and scale it to the shown image."""
    import cv2
    cropped = mask[:img_shape[0], :img_shape[1]].astype(np.uint8)
    return cv2.resize(cropped, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def draw_kept_windows(image: np.ndarray,
                      panels: Sequence[StageWindows],
                      img_shape: Sequence[int],
                      prediction: Optional[np.ndarray] = None,
                      title: Optional[str] = None):
    """A matplotlib figure: one panel per stage with its kept windows, then the predictions.

    Args:
        image: The original RGB image ``(H, W, 3)`` uint8.
        panels: From :func:`kept_window_masks`.
        img_shape: (h, w) of the image as resized by the test pipeline, before padding.
        prediction: An RGB picture of the predictions (same size as ``image``), or None.
        title: Figure title; the default says which block each panel shows.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    height, width = image.shape[:2]
    scale: Tuple[float, float] = (height / img_shape[0], width / img_shape[1])
    columns = len(panels) + (prediction is not None)
    figure, axes = plt.subplots(1, columns, figsize=(3.2 * columns, 3.2 * height / width + 0.9), dpi=120,
                                squeeze=False)
    for axis, panel in zip(axes[0], panels):
        kept = _to_image_frame(panel.mask, img_shape, (height, width))
        shaded = image.astype(np.float32) * np.where(kept, 1.0, PRUNED_BRIGHTNESS)[..., None]
        axis.imshow(shaded.astype(np.uint8))
        for row in np.arange(panel.window_pixels, img_shape[0], panel.window_pixels) * scale[0]:
            axis.axhline(row, color='white', linewidth=0.4, alpha=0.7)
        for col in np.arange(panel.window_pixels, img_shape[1], panel.window_pixels) * scale[1]:
            axis.axvline(col, color='white', linewidth=0.4, alpha=0.7)
        axis.set_title(f'stage {panel.stage + 1}, block {panel.block + 1}/{panel.depth}, ratio {panel.ratio:g}\n'
                       f'{panel.kept}/{panel.total} windows kept', fontsize=8)
    if prediction is not None:
        axes[0][-1].imshow(prediction)
        axes[0][-1].set_title('predictions', fontsize=8)
    for axis in axes[0]:
        axis.set_axis_off()
    figure.suptitle(title or "Kept windows per stage (its last unshifted block; pruned windows dimmed)",
                    fontsize=9)
    figure.tight_layout()
    return figure


def prediction_picture(visualizer_cfg: dict, dataset_meta: dict, image: np.ndarray, data_sample) -> np.ndarray:
    """The predictions in ``data_sample`` drawn on the RGB ``image`` by the task's own visualizer.

    ``visualizer_cfg`` is the config's ``visualizer`` (e.g. mmdet's DetLocalVisualizer,
    mmseg's SegLocalVisualizer); the task's default scope must be set.
    """
    from mmengine.registry import VISUALIZERS
    # A name of its own: visualizers are named singletons, and the picture needs no storage backend.
    settings = {k: v for k, v in visualizer_cfg.items() if k != 'vis_backends'}
    settings['name'] = f'kept-windows-{id(data_sample)}'
    visualizer = VISUALIZERS.build(settings)
    visualizer.dataset_meta = dataset_meta
    visualizer.add_datasample('predictions', image, data_sample, draw_gt=False, show=False)
    return visualizer.get_image()
