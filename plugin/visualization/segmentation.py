"""A readable picture of a semantic segmentation: the image, its ground truth and the prediction, side by side."""
from collections.abc import Sequence

import numpy as np

# Flat class colours: blended with the objects' own colours and textures they would be hard to read.
LABEL_OPACITY = 1.0


def colour_labels(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
                  opacity: float = LABEL_OPACITY) -> np.ndarray:
    """The RGB ``image`` with each pixel blended towards its class colour; labels outside the palette
    (e.g. the ignore index 255) stay as they are."""
    palette = np.asarray(palette, dtype=np.float32)
    if labels.shape != image.shape[:2]:
        raise ValueError(f'labels of shape {labels.shape} do not match the image {image.shape[:2]}')
    known = labels < len(palette)
    colours = palette[np.where(known, labels, 0)]
    blended = np.where(known[..., None], (1 - opacity) * image + opacity * colours, image)
    return blended.round().astype(np.uint8)


def draw_segmentation(image: np.ndarray, ground_truth: np.ndarray, prediction: np.ndarray,
                      classes: Sequence[str], palette: Sequence[Sequence[int]], title: str | None = None,
                      panel_inches: float = 3.2):
    """A matplotlib figure: ``image`` (RGB), its ``ground_truth`` and ``prediction`` label maps (H, W)
    coloured by ``palette``, on the same scale, with a legend of ``classes``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    if len(classes) != len(palette):
        raise ValueError(f'{len(classes)} classes but {len(palette)} palette colours')
    height, width = image.shape[:2]
    figure, axes = plt.subplots(1, 3, figsize=(3 * panel_inches, panel_inches * height / width + 0.7), dpi=120)
    pictures = (image, colour_labels(image, ground_truth, palette), colour_labels(image, prediction, palette))
    for axis, picture, name in zip(axes, pictures, ('image', 'ground truth', 'prediction')):
        axis.imshow(picture, interpolation='nearest')
        axis.set_title(name, fontsize=9)
        axis.set_axis_off()
    handles = [patches.Patch(color=np.asarray(colour) / 255, label=name) for name, colour in zip(classes, palette)]
    figure.legend(handles=handles, loc='lower center', ncol=len(classes), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure
