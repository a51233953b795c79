"""What a SparseViT backbone kept: its windows as masks, the share of the objects they cover, and pictures
of them (the paper's Figure 1) next to the model's predictions.

Each stage's panel shows one block: the stage's last *unshifted* block, i.e.
the sparsest set of windows on the regular grid (later blocks of a grid run a
prefix of the same ranking, so earlier blocks keep a superset). Pruned
windows are dimmed and the regular window grid is drawn over the image.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ..models.utils.records import ForwardRecord
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


def kept_window_masks(record: ForwardRecord, image_index: int = 0) -> list[StageWindows]:
    """Per stage of a backbone's forward pass, the kept windows of its last unshifted block.

    ``record`` comes from ``backbone.forward_with_record`` or :func:`plugin.models.utils.records.recording`;
    ``image_index`` picks the image of its batch.
    """
    panels = []
    for index, stage in enumerate(record.stages):
        block_index = max(j for j, block in enumerate(stage.blocks) if block.shift_size == 0)
        block = stage.blocks[block_index]
        grid = build_window_grid(tuple(stage.hw_shape), stage.window_size, 0, torch.device('cpu'))
        total = grid.token_index.shape[0]
        windows = torch.arange(total) if block.kept is None else block.kept[image_index].cpu()
        height, width = stage.hw_shape
        Hp, Wp = padded_shape(stage.hw_shape, stage.window_size)
        token_mask = torch.zeros(Hp * Wp, dtype=torch.bool)
        token_mask[grid.token_index[windows].flatten()] = True
        token_mask = token_mask.view(Hp, Wp)[:height, :width].numpy()
        pixel_mask = token_mask.repeat(stage.stride, axis=0).repeat(stage.stride, axis=1)
        pixel_mask = pixel_mask[:record.input_shape[0], :record.input_shape[1]]
        panels.append(StageWindows(stage=index, block=block_index, depth=len(stage.blocks), ratio=block.ratio,
                                   kept=len(windows), total=total, mask=pixel_mask,
                                   window_pixels=stage.window_size * stage.stride))
    return panels


def mask_in_image_frame(mask: np.ndarray, img_shape: Sequence[int], image_hw: Sequence[int]) -> np.ndarray:
    """An input-pixel mask cropped to the resized image (no padding) and scaled to an ``image_hw`` frame."""
    import cv2
    cropped = mask[:img_shape[0], :img_shape[1]].astype(np.uint8)
    return cv2.resize(cropped, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


@dataclasses.dataclass
class WindowCoverage:
    """Pixel counts of one stage's kept windows against the ground truth (add them to pool images).

    ``coverage`` is the share of object pixels inside kept windows; ``kept_area`` the share of all
    image pixels inside them, which is what windows chosen without regard to the objects cover.
    """
    object_pixels: int = 0
    covered_object_pixels: int = 0
    image_pixels: int = 0
    kept_image_pixels: int = 0

    def __add__(self, other: 'WindowCoverage') -> 'WindowCoverage':
        return WindowCoverage(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def coverage(self) -> float:
        """NaN when there is no object pixel."""
        return self.covered_object_pixels / self.object_pixels if self.object_pixels else float('nan')

    @property
    def kept_area(self) -> float:
        return self.kept_image_pixels / self.image_pixels if self.image_pixels else float('nan')


def object_coverage(panels: Sequence[StageWindows], object_mask: np.ndarray,
                    img_shape: Sequence[int]) -> list[WindowCoverage]:
    """Per panel (stage), how many ground-truth object pixels lie in its kept windows.

    Args:
        panels: From :func:`kept_window_masks` for this image.
        object_mask: ``(H, W)`` True on object pixels, in the frame of the image as loaded
            (e.g. the union of its instance masks).
        img_shape: (h, w) of the image as resized by the test pipeline, before padding.
    """
    object_mask = np.asarray(object_mask, dtype=bool)
    if object_mask.ndim != 2:
        raise ValueError(f'object_mask must be a 2-D (H, W) mask, got shape {object_mask.shape}')
    counts = []
    for panel in panels:
        kept = mask_in_image_frame(panel.mask, img_shape, object_mask.shape)
        counts.append(WindowCoverage(object_pixels=int(object_mask.sum()),
                                     covered_object_pixels=int((kept & object_mask).sum()),
                                     image_pixels=kept.size, kept_image_pixels=int(kept.sum())))
    return counts


@dataclasses.dataclass
class WindowPictureRow:
    """One model's row of a kept-windows picture: a label, its stage panels and a picture of its predictions."""
    label: str
    panels: Sequence[StageWindows]
    prediction: np.ndarray | None = None


def draw_kept_windows(image: np.ndarray,
                      panels: Sequence[StageWindows],
                      img_shape: Sequence[int],
                      prediction: np.ndarray | None = None,
                      title: str | None = None,
                      object_masks: Sequence[np.ndarray] | None = None):
    """A matplotlib figure: one panel per stage with its kept windows, then the predictions.

    Args:
        image: The original RGB image ``(H, W, 3)`` uint8.
        panels: From :func:`kept_window_masks`.
        img_shape: (h, w) of the image as resized by the test pipeline, before padding.
        prediction: An RGB picture of the predictions (same size as ``image``), or None.
        title: Figure title; the default says which block each panel shows.
        object_masks: Ground-truth instance masks ``(H, W)`` of ``image``: outlined on every panel,
            and each stage's object coverage is given in its title.
    """
    return draw_kept_window_rows(image, [WindowPictureRow('', panels, prediction)], img_shape, title, object_masks)


def draw_kept_window_rows(image: np.ndarray,
                          rows: Sequence[WindowPictureRow],
                          img_shape: Sequence[int],
                          title: str | None = None,
                          object_masks: Sequence[np.ndarray] | None = None):
    """:func:`draw_kept_windows` with one row per model (e.g. per window scorer), all on the same image and scale."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    height, width = image.shape[:2]
    scale: tuple[float, float] = (height / img_shape[0], width / img_shape[1])
    columns = max(len(row.panels) + (row.prediction is not None) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, (3.2 * height / width + 0.6) * len(rows)),
                                dpi=120, squeeze=False)
    union = None if object_masks is None else np.any(np.asarray(object_masks, dtype=bool).reshape(-1, height, width),
                                                      axis=0)
    for row, row_axes in zip(rows, axes):
        coverages = None if union is None else object_coverage(row.panels, union, img_shape)
        for index, (axis, panel) in enumerate(zip(row_axes, row.panels)):
            kept = mask_in_image_frame(panel.mask, img_shape, (height, width))
            shaded = image.astype(np.float32) * np.where(kept, 1.0, PRUNED_BRIGHTNESS)[..., None]
            axis.imshow(shaded.astype(np.uint8))
            for line in np.arange(panel.window_pixels, img_shape[0], panel.window_pixels) * scale[0]:
                axis.axhline(line, color='white', linewidth=0.4, alpha=0.7)
            for line in np.arange(panel.window_pixels, img_shape[1], panel.window_pixels) * scale[1]:
                axis.axvline(line, color='white', linewidth=0.4, alpha=0.7)
            text = (f'stage {panel.stage + 1}, block {panel.block + 1}/{panel.depth}, ratio {panel.ratio:g}\n'
                    f'{panel.kept}/{panel.total} windows kept')
            if coverages is not None:
                text += f', object coverage {coverages[index].coverage:.2f}'
            axis.set_title(f'{row.label}: {text}' if row.label and index == 0 else text, fontsize=8)
        if row.prediction is not None:
            row_axes[len(row.panels)].imshow(row.prediction)
            row_axes[len(row.panels)].set_title(f'{row.label} predictions' if row.label else 'predictions',
                                                fontsize=8)
        for axis in row_axes[:len(row.panels) + (row.prediction is not None)]:
            for mask in [] if object_masks is None else object_masks:
                # ground-truth outlines: a dark line under a light one reads on any background
                axis.contour(np.asarray(mask, dtype=float), levels=[0.5], colors='black', linewidths=1.6)
                axis.contour(np.asarray(mask, dtype=float), levels=[0.5], colors='white', linewidths=0.7)
        for axis in row_axes:
            axis.set_axis_off()
    if title is None:
        title = 'Kept windows per stage (its last unshifted block; pruned windows dimmed)'
        if object_masks is not None:
            title += '; ground-truth objects outlined'
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def prediction_picture(visualizer_cfg: dict, dataset_meta: dict, image: np.ndarray, data_sample,
                       **draw_options) -> np.ndarray:
    """The predictions in ``data_sample`` drawn on the RGB ``image`` by the task's own visualizer.

    ``visualizer_cfg`` is the config's ``visualizer`` (e.g. mmdet's DetLocalVisualizer,
    mmseg's SegLocalVisualizer); the task's default scope must be set. ``draw_options`` go to
    its ``add_datasample``, e.g. ``pred_score_thr=0.5`` for mmdet's.
    """
    from mmengine.registry import VISUALIZERS
    # A name of its own: visualizers are named singletons, and the picture needs no storage backend.
    settings = {k: v for k, v in visualizer_cfg.items() if k != 'vis_backends'}
    settings['name'] = f'kept-windows-{id(data_sample)}'
    visualizer = VISUALIZERS.build(settings)
    visualizer.dataset_meta = dataset_meta
    visualizer.add_datasample('predictions', image, data_sample, draw_gt=False, show=False, **draw_options)
    return visualizer.get_image()
