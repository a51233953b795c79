"""What the models compute, as numbers and pictures: the windows SparseViT keeps, their object coverage,
segmentations."""
from .segmentation import colour_labels, draw_segmentation
from .windows import (
    StageWindows,
    WindowCoverage,
    WindowPictureRow,
    draw_kept_window_rows,
    draw_kept_windows,
    kept_window_masks,
    mask_in_image_frame,
    object_coverage,
    prediction_picture,
)

__all__ = ['StageWindows', 'WindowCoverage', 'WindowPictureRow', 'colour_labels', 'draw_kept_window_rows',
           'draw_kept_windows', 'draw_segmentation', 'kept_window_masks', 'mask_in_image_frame', 'object_coverage',
           'prediction_picture']
