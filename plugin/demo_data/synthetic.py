"""Seeded synthetic data in the real on-disk formats of COCO, ADE20K and KITTI monocular 3D.

Three writers share one idea: every image is drawn from its own random stream
(seed, task, split, index), so a file depends only on those four numbers and a
run with the same seed writes the same bytes whatever else it writes.

- ``write_coco``: shapes (``SHAPE_CLASSES``) textured with photographs on out-of-focus photographs
  with a little clutter, mmdet ``CocoDataset`` layout, one compressed-RLE mask per visible object.
- ``write_ade``: the same kind of scenes as ADE20K-style label PNGs for mmseg: 0 is the background
  and shape ``k`` is ``k + 1`` (``SEMANTIC_CLASSES``, read with ``reduce_zero_label=False``).
- ``write_kitti_mono3d``: road scenes with rendered cuboids, mmdet3d 1.4 KITTI info ``.pkl`` files.
"""
import colorsys
import functools
import json
import math
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'star')
SHAPE_PALETTE = [(230, 25, 75), (0, 130, 200), (60, 180, 75), (255, 200, 0)]
# The classes of the ADE-style label maps, indexed by label value: the background is a class of its own.
SEMANTIC_CLASSES = ('background',) + SHAPE_CLASSES
SEMANTIC_PALETTE = [(50, 50, 50)] + SHAPE_PALETTE

# mmdet3d's KITTI label order: info labels index this tuple, as its converter writes them.
KITTI_CLASSES = ('Pedestrian', 'Cyclist', 'Car', 'Van', 'Truck', 'Person_sitting', 'Tram', 'Misc')
MONO3D_CLASSES = ('Pedestrian', 'Cyclist', 'Car')

TASKS = ('coco', 'ade', 'mono3d')
SPLITS = ('train', 'val')

MIN_IMAGE_SIDE = 32
MIN_SHAPES, MAX_SHAPES = 2, 5
SHAPE_SIZE_RANGE = (0.15, 0.45)  # object diameter as a fraction of the shorter image side
MIN_VISIBLE_FRACTION = 0.3  # an object hidden more than this by later ones is dropped
MIN_VISIBLE_PIXELS_FRACTION = 0.004  # ... and so is one with fewer visible pixels than this share of the image
MIN_COLOUR_DISTANCE = 90.0  # RGB distance between an object and the background under it
# scikit-image's bundled photographs (in its wheel, no download), all CC0 or public domain (docs/demo_data.md):
# backgrounds are blurred colour photos, object textures the detail of texture photos and of portraits.
BACKGROUND_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
TEXTURE_PHOTOS = ('brick', 'grass', 'gravel', 'camera', 'chelsea', 'coffee', 'astronaut')
BACKGROUND_BLUR = (0.03, 0.06)  # Gaussian sigma as a share of the shorter image side: out of focus
CLUTTER_ITEMS = (1, 4)  # thin strokes or small blobs on each background
CLUTTER_CONTRAST = (10.0, 35.0)  # their grey-level offset from the background
TEXTURE_HIGHPASS_SIGMA = 3.0  # pixels: texture detail is what a blur of this size removes
TEXTURE_CONTRAST = (0.25, 0.4)  # relative brightness spread the texture gives an object
OBJECT_VALUE_RANGE = (0.5, 0.8)  # HSV value of object colours: room for texture and shading below white

CAMERA_HEIGHT = 1.65  # metres above the road, as KITTI's camera
FOCAL_TO_WIDTH = 0.8
HORIZON_TO_HEIGHT = 0.45  # principal point row as a fraction of the image height
# KITTI's mean (l, h, w) in metres and sampling weight for each of MONO3D_CLASSES.
CUBOID_MEAN_DIMS = {'Pedestrian': (0.84, 1.76, 0.66), 'Cyclist': (1.76, 1.74, 0.60), 'Car': (3.88, 1.53, 1.63)}
CUBOID_CLASS_WEIGHTS = (0.25, 0.25, 0.5)
# Each class has its own hue band so a small detector can tell end-on pedestrians from cyclists.
# The bands also avoid the hues of grass (about 0.29) and sky (about 0.59).
CUBOID_HUE_RANGES = {'Pedestrian': (0.02, 0.10), 'Cyclist': (0.45, 0.52), 'Car': (0.68, 0.90)}
MIN_CUBOIDS, MAX_CUBOIDS = 2, 5
MIN_CUBOID_VISIBLE_FRACTION = 0.2
MIN_CUBOID_VISIBLE_PIXELS = 16
LIGHT_DIRECTION = np.array([0.3, -1.0, -0.5]) / np.linalg.norm([0.3, -1.0, -0.5])  # towards the sun, y down
# lidar (x forward, y left, z up) -> camera (x right, y down, z forward), offsets of KITTI's rig.
LIDAR_TO_CAMERA = np.array([[0.0, -1.0, 0.0, 0.0],
                            [0.0, 0.0, -1.0, -0.08],
                            [1.0, 0.0, 0.0, -0.27],
                            [0.0, 0.0, 0.0, 1.0]])

Progress = Callable[[Iterable[int], str], Iterable[int]]


@dataclass
class ShapeScene:
    """An RGB image and the visible mask and class index of every object in it."""
    image: np.ndarray
    masks: list[np.ndarray]
    labels: list[int]


@dataclass
class Cuboid:
    """A 3D box in KITTI's camera frame: bottom centre (x, y, z), dims (l, h, w), yaw about y."""
    label: int
    bottom_center: np.ndarray
    dims: np.ndarray
    yaw: float


@dataclass
class Mono3DScene:
    """A rendered road image and, per kept cuboid, its 2D box, truncation and KITTI occlusion level."""
    image: np.ndarray
    cuboids: list[Cuboid]
    boxes: list[tuple[float, float, float, float]]
    truncated: list[float]
    occluded: list[int]


def scene_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The random stream of one image; independent of every other image and of the tasks chosen."""
    return np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split), index])


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(size) < MIN_IMAGE_SIDE:
        raise ValueError(f'{name} must be (height, width) with both sides >= {MIN_IMAGE_SIDE}, got {tuple(size)}')
    return int(size[0]), int(size[1])


def _check_counts(num_train: int, num_val: int) -> None:
    for split, count in zip(SPLITS, (num_train, num_val)):
        if count < 1:
            raise ValueError(f'number of {split} images must be at least 1, got {count}')


def _no_progress(items: Iterable[int], desc: str) -> Iterable[int]:
    return items


def _write_image(path: Path, image_rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == '.jpg' else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if not cv2.imwrite(str(path), np.ascontiguousarray(image_rgb[..., ::-1]), params):
        raise OSError(f'could not write {path}')


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photographs as float RGB; loaded once, read-only (no download needed)."""
    from skimage import data
    photo = getattr(data, name)().astype(np.float64)
    photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
    photo.flags.writeable = False
    return photo


def _photo_crop(rng: np.random.Generator, names: Sequence[str], height: int, width: int,
                scale_range: tuple[float, float]) -> np.ndarray:
    """A random crop of a random photo of ``names``, flipped at random, resized to (height, width)."""
    photo = _photo(names[int(rng.integers(len(names)))])
    # the crop's shorter side as a share of the photo's: small shares zoom in, large ones show more of it
    side = rng.uniform(*scale_range) * min(photo.shape[:2]) / min(height, width)
    crop_h, crop_w = min(photo.shape[0], max(8, round(side * height))), min(photo.shape[1], max(8, round(side * width)))
    top, left = int(rng.integers(photo.shape[0] - crop_h + 1)), int(rng.integers(photo.shape[1] - crop_w + 1))
    crop = photo[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)


def _smooth_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photograph far out of focus (mostly smooth colour), with a little clutter and sensor noise."""
    side = min(height, width)
    image = _photo_crop(rng, BACKGROUND_PHOTOS, height, width, (0.4, 1.0))
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*BACKGROUND_BLUR) * side)
    # clutter: a few thin strokes and small soft blobs, darker or lighter than what is under them
    clutter = np.zeros((height, width), np.float64)
    for _ in range(int(rng.integers(CLUTTER_ITEMS[0], CLUTTER_ITEMS[1] + 1))):
        amplitude = rng.choice([-1.0, 1.0]) * rng.uniform(*CLUTTER_CONTRAST)
        if rng.random() < 0.5:
            start = rng.uniform([0, 0], [width, height])
            steps = np.cumsum(rng.normal(0, 0.15 * side, (4, 2)), axis=0)
            points = np.round((start + np.vstack([[0, 0], steps])) * 16).astype(np.int32)
            cv2.polylines(clutter, [points], False, amplitude, 1, cv2.LINE_AA, shift=4)
        else:
            centre = np.round(rng.uniform([0, 0], [width, height]) * 16).astype(np.int32)
            axes = np.round(rng.uniform(0.01, 0.04, 2) * side * 16).astype(np.int32)
            cv2.ellipse(clutter, tuple(centre), tuple(axes), rng.uniform(0, 180), 0, 360, amplitude, -1,
                        cv2.LINE_AA, shift=4)
    image = image + cv2.GaussianBlur(clutter, (0, 0), 0.7)[..., None]
    return image + rng.normal(0, 2, (height, width, 3))


def _object_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(H, W)`` detail of a photographed texture: its luminance minus its local mean, scaled to unit spread."""
    luminance = _photo_crop(rng, TEXTURE_PHOTOS, height, width, (0.15, 0.5)) @ [0.299, 0.587, 0.114]
    detail = luminance - cv2.GaussianBlur(luminance, (0, 0), TEXTURE_HIGHPASS_SIGMA)
    # a robust spread (median absolute deviation), so that one strong edge in the crop leaves the rest textured
    spread = 1.4826 * float(np.median(np.abs(detail - np.median(detail))))
    return np.clip(detail / max(spread, 1e-3), -2.5, 2.5)


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A saturated colour far from ``behind``; the farthest of 20 tries if none is far enough."""
    best, best_distance = None, -1.0
    for _ in range(20):
        hsv = rng.random(), rng.uniform(0.55, 1.0), rng.uniform(*OBJECT_VALUE_RANGE)
        colour = 255 * np.array(colorsys.hsv_to_rgb(*hsv))
        distance = float(np.linalg.norm(colour - behind))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= MIN_COLOUR_DISTANCE:
            break
    return best


def _shape_polygon(name: str, rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """Vertices (N, 2) in pixels of a shape whose circumscribed circle has ``radius``."""
    rotation = rng.uniform(0, 2 * np.pi)
    if name == 'circle':
        angles, radii = np.linspace(0, 2 * np.pi, 48, endpoint=False), np.full(48, radius)
    elif name == 'square':
        angles, radii = rotation + np.arange(4) * np.pi / 2, np.full(4, radius)
    elif name == 'triangle':
        angles = rotation + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        radii = np.full(3, radius)
    elif name == 'star':
        angles = rotation + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    else:
        raise ValueError(f'unknown shape {name!r}; known shapes: {SHAPE_CLASSES}')
    return centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _fill_polygon(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    # 4 fractional bits keep sub-pixel vertices; no anti-aliasing so the mask is exactly what is painted
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _topmost_owner(masks: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Index of the last-painted mask at each pixel, -1 where none is."""
    owner = np.full((height, width), -1, np.int32)
    for index, mask in enumerate(masks):
        owner[mask] = index
    return owner


def _visible_indices(full_masks: Sequence[np.ndarray], min_fraction: float, min_pixels: float) -> list[int]:
    """Objects left enough visible by those painted after them; dropping some only uncovers the others."""
    if not full_masks:
        return []
    owner = _topmost_owner(full_masks, *full_masks[0].shape)
    kept = []
    for index, mask in enumerate(full_masks):
        visible = int(np.count_nonzero(owner == index))
        if visible >= min_pixels and visible >= min_fraction * max(int(np.count_nonzero(mask)), 1):
            kept.append(index)
    return kept


def render_shape_scene(rng: np.random.Generator, height: int, width: int) -> ShapeScene:
    """Several textured shapes painted in turn over a smooth background; masks are the visible parts."""
    image = _smooth_background(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    side = min(height, width)
    labels, full_masks, fills = [], [], []
    for _ in range(int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        radius = 0.5 * side * rng.uniform(*SHAPE_SIZE_RANGE)
        # the centre stays inside the image, so at most about half of a shape is cut by the border
        centre = np.array([rng.uniform(radius / 2, width - radius / 2), rng.uniform(radius / 2, height - radius / 2)])
        mask = _fill_polygon(_shape_polygon(SHAPE_CLASSES[label], rng, centre, radius), height, width)
        if not mask.any():
            continue
        colour = _contrasting_colour(rng, image[mask].mean(axis=0))
        # a photographed texture modulates the colour, and a linear shading runs across the shape
        shade_angle = rng.uniform(0, 2 * np.pi)
        ramp = (math.cos(shade_angle) * (xx - centre[0]) + math.sin(shade_angle) * (yy - centre[1])) / radius
        texture = rng.uniform(*TEXTURE_CONTRAST) * _object_texture(rng, height, width)
        fills.append(colour * ((1 + 0.2 * np.clip(ramp, -1, 1)) * (1 + texture))[..., None])
        labels.append(label)
        full_masks.append(mask)
    kept = _visible_indices(full_masks, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS_FRACTION * height * width)
    owner = _topmost_owner([full_masks[i] for i in kept], height, width)
    masks = []
    for position, index in enumerate(kept):
        visible = owner == position
        image[visible] = fills[index][visible]
        masks.append(visible)
    return ShapeScene(np.clip(np.round(image), 0, 255).astype(np.uint8), masks, [labels[i] for i in kept])


def _coco_annotations(scene: ShapeScene, image_id: int, first_id: int) -> list[dict]:
    annotations = []
    for offset, (mask, label) in enumerate(zip(scene.masks, scene.labels)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(dict(
            id=first_id + offset,
            image_id=image_id,
            category_id=label + 1,
            bbox=[float(v) for v in mask_utils.toBbox(rle)],
            area=float(mask_utils.area(rle)),
            segmentation=dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii')),
            iscrowd=0))
    return annotations


def write_coco(out_dir: str | Path, seed: int, num_train: int, num_val: int, image_size: Sequence[int],
               progress: Progress = _no_progress) -> Path:
    """Write ``out_dir/coco/{train,val}/*.jpg`` and ``annotations/instances_{train,val}.json``; returns the root."""
    height, width = _check_size('image_size', image_size)
    _check_counts(num_train, num_val)
    root = Path(out_dir) / 'coco'
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(SHAPE_CLASSES)]
    for split, count in zip(SPLITS, (num_train, num_val)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in progress(range(count), f'coco {split}'):
            scene = render_shape_scene(scene_rng(seed, 'coco', split, index), height, width)
            file_name = f'{index:012d}.jpg'
            _write_image(root / split / file_name, scene.image)
            images.append(dict(id=index + 1, file_name=file_name, height=height, width=width))
            annotations += _coco_annotations(scene, index + 1, len(annotations) + 1)
        content = dict(info=dict(description=f'EffiDense synthetic shapes, seed {seed}'),
                       images=images, annotations=annotations, categories=categories)
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(content))
    return root


def semantic_labels(scene: ShapeScene) -> np.ndarray:
    """ADE20K-style label map indexing ``SEMANTIC_CLASSES``: 0 background, shape class k as k + 1."""
    labels = np.zeros(scene.image.shape[:2], np.uint8)
    for mask, label in zip(scene.masks, scene.labels):
        labels[mask] = label + 1
    return labels


def write_ade(out_dir: str | Path, seed: int, num_train: int, num_val: int, image_size: Sequence[int],
              progress: Progress = _no_progress) -> Path:
    """Write ``out_dir/ade/{images,annotations}/{training,validation}/`` (.jpg images, .png labels)."""
    height, width = _check_size('image_size', image_size)
    _check_counts(num_train, num_val)
    root = Path(out_dir) / 'ade'
    for split, count, folder in zip(SPLITS, (num_train, num_val), ('training', 'validation')):
        (root / 'images' / folder).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / folder).mkdir(parents=True, exist_ok=True)
        for index in progress(range(count), f'ade {split}'):
            scene = render_shape_scene(scene_rng(seed, 'ade', split, index), height, width)
            name = f'ADE_{split}_{index:08d}'
            _write_image(root / 'images' / folder / f'{name}.jpg', scene.image)
            cv2.imwrite(str(root / 'annotations' / folder / f'{name}.png'), semantic_labels(scene))
    return root


def kitti_camera(height: int, width: int) -> np.ndarray:
    """A 4x4 KITTI-like ``cam2img``: square pixels, focal 0.8 x width, horizon a little above the middle."""
    focal = FOCAL_TO_WIDTH * width
    return np.array([[focal, 0.0, width / 2, 0.0],
                     [0.0, focal, HORIZON_TO_HEIGHT * height, 0.0],
                     [0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


def project_points(points: np.ndarray, cam2img: np.ndarray) -> np.ndarray:
    """Camera-frame points (N, 3) to pixels (N, 2)."""
    homogeneous = points @ cam2img[:3, :3].T + cam2img[:3, 3]
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def cuboid_corners(cuboid: Cuboid) -> np.ndarray:
    """The 8 corners (8, 3) in the camera frame; bit 0/1/2 of a corner's index picks its +x/+y/+z side."""
    length, height, width = cuboid.dims
    signs = np.array([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], np.float64)
    local = (signs - [0.5, 1.0, 0.5]) * [length, height, width]
    cos, sin = math.cos(cuboid.yaw), math.sin(cuboid.yaw)
    # KITTI's yaw: rotation about the camera's y axis, x' = cos x + sin z, z' = -sin x + cos z
    rotation = np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])
    return local @ rotation.T + cuboid.bottom_center


def _wrap_angle(angle: float) -> float:
    """The same angle in [-pi, pi)."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def gravity_center(cuboid: Cuboid) -> np.ndarray:
    return cuboid.bottom_center - [0.0, cuboid.dims[1] / 2, 0.0]


# The six faces as corner indices (see ``cuboid_corners``) in outline order.
_FACES = ((0, 2, 6, 4), (1, 3, 7, 5), (0, 1, 5, 4), (2, 3, 7, 6), (0, 1, 3, 2), (4, 5, 7, 6))


def _road_background(rng: np.random.Generator, height: int, width: int, cam2img: np.ndarray) -> np.ndarray:
    """Sky above the horizon; below it a road with dashed lanes and grass verges, fading into haze."""
    focal, cx, cy = cam2img[0, 0], cam2img[0, 2], cam2img[1, 2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    sky_top, haze = np.array([110, 160, 225]) + rng.uniform(-15, 15, 3), np.array([205, 215, 225.0])
    image = sky_top + np.clip(rows / cy, 0, 1)[..., None] * (haze - sky_top)
    below = rows > cy + 0.5
    # each ground pixel back-projected onto the plane y = CAMERA_HEIGHT
    depth = focal * CAMERA_HEIGHT / np.maximum(rows - cy, 0.5)
    lateral = (cols - cx) * depth / focal
    road_half_width, lane_width = rng.uniform(5.0, 8.0), rng.uniform(3.2, 3.8)
    lane_offset, dash_phase = rng.uniform(-1.0, 1.0), rng.uniform(0, 8)
    asphalt = np.array([95, 95, 100]) + rng.uniform(-15, 15)
    grass = np.array([70, 120, 55]) + rng.uniform(-15, 15, 3)
    ground = np.where((np.abs(lateral) < road_half_width)[..., None], asphalt, grass)
    lane_distance = np.abs((lateral - lane_offset + lane_width / 2) % lane_width - lane_width / 2)
    marking = (lane_distance < 0.12) & ((depth + dash_phase) % 8 < 4) & (np.abs(lateral) < road_half_width - 0.5)
    ground = np.where(marking[..., None], np.array([230, 230, 225.0]), ground)
    fog = np.exp(-depth / 90.0)[..., None]
    image = np.where(below[..., None], fog * ground + (1 - fog) * haze, image)
    return image + rng.normal(0, 5, (height, width, 1))


def _sample_cuboids(rng: np.random.Generator, height: int, width: int, cam2img: np.ndarray) -> list[Cuboid]:
    """Boxes on the road, apart in bird's-eye view, whose centres project inside the image."""
    focal, cx, cy = cam2img[0, 0], cam2img[0, 2], cam2img[1, 2]
    # nearest depth at which the ground under the principal point is still in the image
    near = 1.1 * focal * CAMERA_HEIGHT / (height - cy)
    cuboids: list[Cuboid] = []
    for _ in range(int(rng.integers(MIN_CUBOIDS, MAX_CUBOIDS + 1))):
        for _attempt in range(20):
            label = int(rng.choice(len(MONO3D_CLASSES), p=CUBOID_CLASS_WEIGHTS))
            name = MONO3D_CLASSES[label]
            dims = np.array(CUBOID_MEAN_DIMS[name]) * rng.uniform(0.9, 1.1, 3)
            depth = rng.uniform(near, 2.8 * near)
            lateral = rng.uniform(-0.85, 0.85) * depth * cx / focal
            # vehicles mostly drive along the road (yaw near +-90 degrees); pedestrians face anywhere
            if name != 'Pedestrian' and rng.random() < 0.7:
                yaw = rng.choice([-0.5, 0.5]) * np.pi + rng.normal(0, 0.25)
            else:
                yaw = rng.uniform(-np.pi, np.pi)
            candidate = Cuboid(label, np.array([lateral, CAMERA_HEIGHT, depth]), dims, _wrap_angle(yaw))
            centre = project_points(gravity_center(candidate)[None], cam2img)[0]
            if not (0 <= centre[0] < width and 0 <= centre[1] < height):
                continue
            footprint = 0.5 * math.hypot(dims[0], dims[2])
            if all(np.linalg.norm(candidate.bottom_center[[0, 2]] - other.bottom_center[[0, 2]])
                   > footprint + 0.5 * math.hypot(other.dims[0], other.dims[2]) + 0.3 for other in cuboids):
                cuboids.append(candidate)
                break
    return cuboids


def _silhouette(cuboid: Cuboid, cam2img: np.ndarray, height: int, width: int) -> np.ndarray:
    hull = cv2.convexHull(project_points(cuboid_corners(cuboid), cam2img).astype(np.float32))
    return _fill_polygon(hull[:, 0].astype(np.float64), height, width)


def _paint_cuboid(image: np.ndarray, cuboid: Cuboid, colour: np.ndarray, cam2img: np.ndarray) -> None:
    """Paint the faces that look towards the camera, shaded by a fixed sun, with dark edges."""
    corners = cuboid_corners(cuboid)
    pixels = project_points(corners, cam2img)
    box_centre = corners.mean(axis=0)
    outlines = []
    for face in _FACES:
        face_centre = corners[list(face)].mean(axis=0)
        normal = face_centre - box_centre
        normal /= np.linalg.norm(normal)
        # back-face culling: on a convex box the faces turned to the camera never overlap each other
        if np.dot(normal, face_centre) >= 0:
            continue
        shade = 0.35 + 0.65 * max(0.0, float(np.dot(normal, LIGHT_DIRECTION)))
        outline = np.round(pixels[list(face)] * 16).astype(np.int32)
        cv2.fillPoly(image, [outline], tuple(float(c) for c in colour * shade), lineType=cv2.LINE_8, shift=4)
        outlines.append(outline)
    cv2.polylines(image, outlines, True, tuple(float(c) for c in colour * 0.25), 1, cv2.LINE_AA, shift=4)


def _clipped_box(cuboid: Cuboid, cam2img: np.ndarray, height: int, width: int) -> tuple[tuple[float, ...], float]:
    """The projected box's hull clipped to the image (as mmdet3d's KITTI converter) and the share cut off."""
    hull = cv2.convexHull(project_points(cuboid_corners(cuboid), cam2img).astype(np.float32))
    canvas = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    inside_area, inside = cv2.intersectConvexConvex(hull, canvas)
    inside = inside.reshape(-1, 2)
    box = (float(inside[:, 0].min()), float(inside[:, 1].min()), float(inside[:, 0].max()), float(inside[:, 1].max()))
    return box, 1.0 - float(inside_area) / float(cv2.contourArea(hull))


def render_mono3d_scene(rng: np.random.Generator, height: int, width: int, cam2img: np.ndarray) -> Mono3DScene:
    """Cuboids on a road painted far to near; ones hidden behind nearer ones are dropped."""
    image = _road_background(rng, height, width, cam2img)
    cuboids = _sample_cuboids(rng, height, width, cam2img)
    cuboids.sort(key=lambda cuboid: -np.linalg.norm(cuboid.bottom_center))
    colours = [255 * np.array(colorsys.hsv_to_rgb(rng.uniform(*CUBOID_HUE_RANGES[MONO3D_CLASSES[c.label]]),
                                                  rng.uniform(0.6, 0.95), rng.uniform(0.7, 1.0))) for c in cuboids]
    silhouettes = [_silhouette(c, cam2img, height, width) for c in cuboids]
    kept = _visible_indices(silhouettes, MIN_CUBOID_VISIBLE_FRACTION, MIN_CUBOID_VISIBLE_PIXELS)
    owner = _topmost_owner([silhouettes[i] for i in kept], height, width)
    boxes, truncation, occlusion = [], [], []
    for position, index in enumerate(kept):
        _paint_cuboid(image, cuboids[index], colours[index], cam2img)
        box, truncated = _clipped_box(cuboids[index], cam2img, height, width)
        visible = np.count_nonzero(owner == position) / np.count_nonzero(silhouettes[index])
        boxes.append(box)
        truncation.append(round(truncated, 2))
        occlusion.append(0 if visible >= 0.8 else 1 if visible >= 0.5 else 2)
    image = np.clip(np.round(image + rng.normal(0, 3, image.shape)), 0, 255).astype(np.uint8)
    return Mono3DScene(image, [cuboids[i] for i in kept], boxes, truncation, occlusion)


def kitti_difficulty(box_height: float, occluded: int, truncated: float) -> int:
    """KITTI's easy (0) / moderate (1) / hard (2) / none (-1), from the 2D box height in pixels."""
    for level, (min_height, max_occluded, max_truncated) in enumerate(((40, 0, 0.15), (25, 1, 0.3), (25, 2, 0.5))):
        if box_height >= min_height and occluded <= max_occluded and truncated <= max_truncated:
            return level
    return -1


def _kitti_instances(scene: Mono3DScene, cam2img: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Frame-based ``instances`` (read by KittiMetric) and the ``cam_instances['CAM2']`` of fov-based loading."""
    instances, camera_instances = [], []
    for index, (cuboid, box) in enumerate(zip(scene.cuboids, scene.boxes)):
        centre = gravity_center(cuboid)
        center_2d = [float(v) for v in project_points(centre[None], cam2img)[0]]
        bbox_3d = [float(v) for v in (*cuboid.bottom_center, *cuboid.dims, cuboid.yaw)]
        label = KITTI_CLASSES.index(MONO3D_CLASSES[cuboid.label])
        alpha = _wrap_angle(cuboid.yaw - math.atan2(centre[0], centre[2]))
        shared = dict(bbox=list(box), bbox_label=label, bbox_3d=bbox_3d, bbox_label_3d=label,
                      depth=float(centre[2]), center_2d=center_2d)
        instances.append(dict(
            shared, truncated=scene.truncated[index], occluded=scene.occluded[index], alpha=alpha, score=0.0,
            index=index, group_id=index,
            difficulty=kitti_difficulty(box[3] - box[1], scene.occluded[index], scene.truncated[index])))
        camera_instances.append(dict(shared, bbox_3d_isvalid=True, velocity=-1))
    return instances, camera_instances


def write_kitti_mono3d(out_dir: str | Path, seed: int, num_train: int, num_val: int, image_size: Sequence[int],
                       progress: Progress = _no_progress) -> Path:
    """Write ``out_dir/kitti_mono/training/image_2/*.png``, ``ImageSets/`` and ``kitti_infos_{train,val}.pkl``."""
    height, width = _check_size('mono3d_image_size', image_size)
    _check_counts(num_train, num_val)
    root = Path(out_dir) / 'kitti_mono'
    (root / 'training' / 'image_2').mkdir(parents=True, exist_ok=True)
    (root / 'ImageSets').mkdir(exist_ok=True)
    cam2img = kitti_camera(height, width)
    metainfo = dict(categories={name: i for i, name in enumerate(KITTI_CLASSES)}, dataset='kitti', info_version='1.1')
    first_index = 0
    for split, count in zip(SPLITS, (num_train, num_val)):
        data_list = []
        # KITTI's val images live in training/ too, so both splits share one running index
        for index in progress(range(first_index, first_index + count), f'mono3d {split}'):
            scene = render_mono3d_scene(scene_rng(seed, 'mono3d', split, index - first_index), height, width, cam2img)
            file_name = f'{index:06d}.png'
            _write_image(root / 'training' / 'image_2' / file_name, scene.image)
            instances, camera_instances = _kitti_instances(scene, cam2img)
            camera = dict(img_path=file_name, height=height, width=width, cam2img=cam2img.tolist(),
                          lidar2cam=LIDAR_TO_CAMERA.tolist(), lidar2img=(cam2img @ LIDAR_TO_CAMERA).tolist())
            data_list.append(dict(sample_idx=index, images=dict(CAM2=camera), instances=instances,
                                  cam_instances=dict(CAM2=camera_instances)))
        split_indices = range(first_index, first_index + count)
        (root / 'ImageSets' / f'{split}.txt').write_text(''.join(f'{i:06d}\n' for i in split_indices))
        with open(root / f'kitti_infos_{split}.pkl', 'wb') as file:
            pickle.dump(dict(metainfo=metainfo, data_list=data_list), file, protocol=4)
        first_index += count
    return root


def make_demo_data(out_dir: str | Path,
                   seed: int = 0,
                   num_train: int = 300,
                   num_val: int = 50,
                   image_size: Sequence[int] = (160, 160),
                   tasks: Sequence[str] = TASKS,
                   mono3d_image_size: Sequence[int] = (160, 512),
                   progress: Progress = _no_progress) -> dict[str, Path]:
    """Write the datasets of ``tasks`` under ``out_dir``; returns each task's root folder."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f'unknown tasks {unknown}; allowed: {TASKS}')
    if seed < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')
    # everything is checked before anything is written, so a bad call leaves no half-written data
    _check_counts(num_train, num_val)
    if {'coco', 'ade'} & set(tasks):
        _check_size('image_size', image_size)
    if 'mono3d' in tasks:
        _check_size('mono3d_image_size', mono3d_image_size)
    writers = dict(coco=(write_coco, image_size), ade=(write_ade, image_size),
                   mono3d=(write_kitti_mono3d, mono3d_image_size))
    return {task: writers[task][0](out_dir, seed, num_train, num_val, writers[task][1], progress)
            for task in TASKS if task in tasks}
