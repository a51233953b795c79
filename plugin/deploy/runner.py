"""Run a whole Mask R-CNN exported by ``tools/export.py --whole-model`` in ONNX Runtime, from image to detections.

This module imports only numpy, OpenCV and ONNX Runtime (torch, mmcv, mmdet and mmengine are imported lazily,
by :meth:`Detections.to_data_sample` and by a config check), so a deployment without PyTorch can copy this one
file. The exported graph (``plugin.deploy.detector``) takes a normalised image padded to the file's fixed size and
the size of the resized image in it; here the config's test pipeline is applied as mmdet applies it (OpenCV
resize as mmcv's ``Resize``, mmdet's ``DetDataPreprocessor`` normalisation and zero padding), and the fixed-size
detections are rescaled to the original image and their masks pasted as mmdet's ``FCNMaskHead`` does.

The file carries what the runner needs in its ONNX metadata (key ``effidense.detector``, JSON): the test pipeline's
resize, the preprocessor's mean/std/channel flip/pad value, the class names and palette, the mask threshold, the
config's name, a fingerprint of its ``model`` settings and the export's overrides. The input size, the batch and
the number of detections are the graph's static shapes.
"""
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

METADATA_KEY = 'effidense.detector'
METADATA_VERSION = 1
INPUT_NAMES = ('image', 'image_shape')
OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'masks', 'num_detections')
# mmcv's ``imresize`` interpolation names (OpenCV backend).
CV2_INTERPOLATIONS = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
                      'area': cv2.INTER_AREA, 'lanczos': cv2.INTER_LANCZOS4}
# Transforms of a detection test pipeline that the runner reproduces (with Resize) or that do not touch the image.
PIPELINE_PASS_THROUGH = ('LoadImageFromFile', 'LoadImageFromNDArray', 'LoadAnnotations', 'PackDetInputs')
CHANNEL_ORDERS = ('bgr', 'rgb')

ImageInput = np.ndarray | str | Path


def model_fingerprint(model_cfg: Mapping[str, Any]) -> str:
    """A short hash of a config's ``model`` settings (canonical JSON), to tell files of different models apart."""
    text = json.dumps(model_cfg, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _transform_name(transform: Mapping[str, Any]) -> str:
    name = transform.get('type', '')
    return name if isinstance(name, str) else getattr(name, '__name__', repr(name))


def resize_settings(pipeline: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The single ``Resize`` of a detection test pipeline as the runner applies it; one-line errors for a pipeline
    with any other image transform (the runner would not reproduce it)."""
    resizes = []
    for transform in pipeline:
        name = _transform_name(transform).split('.')[-1]
        if name == 'Resize':
            resizes.append(transform)
        elif name not in PIPELINE_PASS_THROUGH:
            raise ValueError(f'the test pipeline has a {name}: the runner reproduces {", ".join(PIPELINE_PASS_THROUGH)}'
                             f' and one Resize')
    if len(resizes) != 1:
        raise ValueError(f'the test pipeline has {len(resizes)} Resize transforms; the runner reproduces exactly one')
    resize = resizes[0]
    if resize.get('backend', 'cv2') != 'cv2':
        raise ValueError(f'the test pipeline\'s Resize uses backend {resize["backend"]!r}; the runner resizes with '
                         f'OpenCV as backend=\'cv2\' does')
    interpolation = resize.get('interpolation', 'bilinear')
    if interpolation not in CV2_INTERPOLATIONS:
        raise ValueError(f'the test pipeline\'s Resize interpolation {interpolation!r} is not one of '
                         f'{sorted(CV2_INTERPOLATIONS)}')
    scale, scale_factor = resize.get('scale'), resize.get('scale_factor')
    if scale is None and scale_factor is None:
        raise ValueError('the test pipeline\'s Resize has neither scale nor scale_factor')
    if isinstance(scale, int):
        scale = (scale, scale)
    if isinstance(scale_factor, (int, float)):
        scale_factor = (float(scale_factor), float(scale_factor))
    return {'scale': None if scale is None else [int(side) for side in scale],
            'scale_factor': None if scale_factor is None else [float(f) for f in scale_factor],
            'keep_ratio': bool(resize.get('keep_ratio', False)), 'interpolation': interpolation}


def resized_shape(height: int, width: int, resize: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[float, float]]:
    """``((new_h, new_w), (w_scale, h_scale))`` of mmdet's ``Resize`` (mmcv's ``imrescale``/``imresize`` sizes)."""
    def scale_size(factors: Sequence[float]) -> tuple[int, int]:  # mmcv's _scale_size: (w, h)
        return int(width * float(factors[0]) + 0.5), int(height * float(factors[1]) + 0.5)

    scale = tuple(resize['scale']) if resize['scale'] is not None else scale_size(resize['scale_factor'])
    if resize['keep_ratio']:
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
        new_w, new_h = scale_size((factor, factor))
        return (new_h, new_w), (new_w / width, new_h / height)
    new_w, new_h = scale
    return (new_h, new_w), (new_w / width, new_h / height)


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """How to prepare an exported detector's input and read its output (the file's ``effidense.detector``
    metadata); the input size, batch and number of detections are the graph's static shapes."""
    resize: dict[str, Any]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    flip_channels: bool
    pad_value: float
    classes: tuple[str, ...]
    palette: list | None
    mask_threshold: float
    config: str
    fingerprint: str
    overrides: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({'version': METADATA_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> 'DetectorSettings':
        values = json.loads(text)
        version = values.pop('version', None)
        if version != METADATA_VERSION:
            raise ValueError(f'the file\'s detector metadata has version {version}, this runner reads version '
                             f'{METADATA_VERSION}: export it again')
        values['classes'] = tuple(values['classes'])
        for name in ('mean', 'std'):
            values[name] = None if values[name] is None else tuple(values[name])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """One image after the test pipeline: the graph's input and what maps its detections back.

    input: ``(3, H, W)`` float32, normalised and zero-padded (pad value) to the file's input size.
    ori_shape, img_shape: (height, width) of the original and of the resized image.
    scale_factor: ``(w_scale, h_scale)`` from the original to the resized image, as mmdet's ``Resize``.
    """
    input: np.ndarray
    ori_shape: tuple[int, int]
    img_shape: tuple[int, int]
    scale_factor: tuple[float, float]
    img_path: str | None = None


@dataclasses.dataclass(frozen=True)
class Detections:
    """One image's detections in its original pixels, as mmdet's ``predict`` returns them (rescaled).

    bboxes ``(N, 4)`` float32 x1, y1, x2, y2; scores ``(N,)`` float32, highest first; labels ``(N,)`` int64;
    masks ``(N, H, W)`` bool at the original size (mask probability >= ``mask_threshold``);
    mask_probabilities ``(N, h, w)`` float32, each detection's mask at the mask head's resolution (in its box).
    """
    bboxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    ori_shape: tuple[int, int]
    img_shape: tuple[int, int]
    scale_factor: tuple[float, float]
    img_path: str | None = None
    mask_probabilities: np.ndarray | None = None
    mask_threshold: float = 0.5

    def to_data_sample(self, metainfo: Mapping[str, Any] | None = None):
        """An mmdet ``DetDataSample`` with these ``pred_instances`` (torch tensors, as mmdet's ``predict`` gives
        them), which ``DetLocalVisualizer`` and ``CocoMetric`` take; ``metainfo`` adds keys (e.g. ``img_id``).
        Imports torch, mmengine and mmdet here."""
        import torch
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        info = {'ori_shape': self.ori_shape, 'img_shape': self.img_shape, 'scale_factor': self.scale_factor}
        if self.img_path is not None:
            info['img_path'] = self.img_path
        sample = DetDataSample(metainfo={**info, **(metainfo or {})})
        sample.pred_instances = InstanceData(
            bboxes=torch.from_numpy(self.bboxes), scores=torch.from_numpy(self.scores),
            labels=torch.from_numpy(self.labels), masks=torch.from_numpy(self.masks))
        return sample


def _fused_multiply_add(a: np.ndarray, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """``a * b + c`` rounded once to float32, as the fused multiply-adds of torch's CPU ``grid_sample``."""
    return (np.asarray(a, np.float64) * np.float64(b) + np.asarray(c, np.float64)).astype(np.float32)


class _SampleAxis(NamedTuple):
    """Where ``grid_sample`` (bilinear, ``align_corners=False``, zero padding) reads along one axis of a mask: per
    output position its two neighbours' indices into the mask padded by one zero on each side (an index outside
    the mask reads a zero) and their float32 weights."""
    low: np.ndarray
    high: np.ndarray
    low_weight: np.ndarray
    high_weight: np.ndarray

    @classmethod
    def of(cls, grid: np.ndarray, size: int) -> '_SampleAxis':
        position = _fused_multiply_add(grid + np.float32(1), np.float32(size / 2), -0.5)
        floor = np.floor(position)
        high_weight = position - floor
        low = np.clip(floor, -1, size).astype(np.int64) + 1
        high = np.clip(floor + 1, -1, size).astype(np.int64) + 1
        return cls(low, high, np.float32(1) - high_weight, high_weight)

    def weight_matrix(self, padded_size: int) -> np.ndarray:
        """``(positions, padded_size)`` float64: the interpolation as a matrix (two weights per row)."""
        matrix = np.zeros((len(self.low), padded_size))
        rows = np.arange(len(self.low))
        # Two assignments, so where low == high (both clipped into the zero padding) the weights add up.
        matrix[rows, self.low] = self.low_weight
        matrix[rows, self.high] += self.high_weight
        return matrix


def _sample_pixels(padded: np.ndarray, rows: _SampleAxis, cols: _SampleAxis, row_index: np.ndarray,
                   col_index: np.ndarray) -> np.ndarray:
    """float32 ``grid_sample`` values at the pixels ``(row_index, col_index)``, in torch's CPU kernel's order of
    float operations (so bit for bit its result)."""
    south, north = rows.low_weight[row_index], rows.high_weight[row_index]
    east, west = cols.low_weight[col_index], cols.high_weight[col_index]
    row0, row1, col0, col1 = rows.low[row_index], rows.high[row_index], cols.low[col_index], cols.high[col_index]
    value = padded[row0, col0] * (south * east)
    value = _fused_multiply_add(padded[row0, col1], south * west, value)
    value = _fused_multiply_add(padded[row1, col0], north * east, value)
    return _fused_multiply_add(padded[row1, col1], north * west, value)


# The float64 interpolation differs from torch's float32 kernel by a few float32 ulps (< 1e-6 on probabilities);
# pixels this close to the threshold are decided by the kernel's own arithmetic.
EXACT_BAND = 1e-5


def _sampled_at_least(mask: np.ndarray, grid_x: np.ndarray, grid_y: np.ndarray, threshold: float) -> np.ndarray:
    """``F.grid_sample(mask, grid, align_corners=False) >= threshold`` (bilinear, zero padding) on the separable grid
    of ``grid_x`` (columns) by ``grid_y`` (rows), bit for bit as torch's CPU kernel decides it.

    The interpolation is separable: two small matrix products give it in float64 for the whole grid (100 masks
    pasted into 300-pixel boxes: 3.5x faster than every pixel in the kernel's float32 order); only the pixels
    within ``EXACT_BAND`` of the threshold are recomputed in that order.
    """
    rows, cols = _SampleAxis.of(grid_y, mask.shape[0]), _SampleAxis.of(grid_x, mask.shape[1])
    padded = np.pad(mask.astype(np.float32), 1)
    margin = (rows.weight_matrix(padded.shape[0]) @ padded.astype(np.float64)
              @ cols.weight_matrix(padded.shape[1]).T) - threshold
    decided = margin >= 0
    # The kernel's rounding error grows with the values interpolated (probabilities: at most 1).
    band = EXACT_BAND * max(1., float(np.abs(padded).max()))
    near = np.abs(margin, out=margin) <= band
    # Few rows hold such pixels: finding them row-wise first is cheaper than nonzero over the whole grid.
    near_rows = np.flatnonzero(near.any(axis=1))
    if len(near_rows):
        row_index, col_index = np.nonzero(near[near_rows])
        row_index = near_rows[row_index]
        decided[row_index, col_index] = _sample_pixels(padded, rows, cols, row_index, col_index) >= threshold
    return decided


def paste_masks(probabilities: np.ndarray, bboxes: np.ndarray, height: int, width: int,
                threshold: float) -> np.ndarray:
    """mmdet's ``FCNMaskHead`` pasting on the CPU (``_do_paste_mask`` with ``skip_empty``, one box at a time):
    ``(N, h, w)`` mask probabilities in their boxes ``(N, 4)`` -> ``(N, height, width)`` bool, >= ``threshold``."""
    masks = np.zeros((len(bboxes), height, width), dtype=bool)
    for index, (probability, box) in enumerate(zip(probabilities, bboxes.astype(np.float32))):
        x0, y0, x1, y1 = box
        left, top = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        right, bottom = min(int(math.ceil(x1)) + 1, width), min(int(math.ceil(y1)) + 1, height)
        if right <= left or bottom <= top:
            continue
        with np.errstate(divide='ignore', invalid='ignore'):
            grid_x = (np.arange(left, right, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0)
            grid_y = (np.arange(top, bottom, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0)
            grid_x, grid_y = grid_x * np.float32(2) - np.float32(1), grid_y * np.float32(2) - np.float32(1)
            # mmdet sets the infinite coordinates of a zero-width (height) box to 0.
            grid_x[np.isinf(grid_x)] = 0
            grid_y[np.isinf(grid_y)] = 0
            masks[index, top:bottom, left:right] = _sampled_at_least(probability, grid_x, grid_y, threshold)
    return masks


def read_image(path: str | Path) -> np.ndarray:
    """A colour image file as HxWx3 uint8 BGR, decoded as mmcv's ``LoadImageFromFile`` does (cv2, 'color')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no image file {path}')
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'OpenCV cannot decode {path} as an image')
    return image


def _check_image(image: object, channel_order: str) -> np.ndarray:
    kind = f'an HxWx3 uint8 array ({channel_order.upper()}) or a path to an image file'
    if not isinstance(image, np.ndarray):
        raise TypeError(f'an image is {kind}, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise TypeError(f'an image array must hold uint8 pixels, got {image.dtype}: an image is {kind}')
    channels = image.shape[2] if image.ndim == 3 else 1 if image.ndim == 2 else None
    if channels != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f'an image array must be HxWx3 with 3 colour channels, got shape {image.shape}'
                         + (f' ({channels} channel{"s" * (channels != 1)}: convert it to 3 first, e.g. with '
                            f'cv2.cvtColor)' if channels not in (None, 3) else ''))
    return image


class OnnxDetector:
    """A whole Mask R-CNN exported by ``tools/export.py --whole-model``, run in ONNX Runtime on the CPU.

    Args:
        path: The ``.onnx`` file.
        config: Optionally the config (path, or a loaded mmengine ``Config``/dict) the file must have been exported
            from: its ``model`` fingerprint and test-pipeline resize must match the file's (needs mmengine for a path).
        input_size: Optionally the (height, width) the file must take.
        threads: ONNX Runtime's intra-op threads (default: its own choice).
        spinning: Whether its idle threads busy-wait for the next run (see :func:`onnxruntime_session`).
    """

    def __init__(self, path: str | Path, config: str | Path | Mapping[str, Any] | None = None,
                 input_size: Sequence[int] | None = None, threads: int | None = None, spinning: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'no exported detector {self.path}')
        try:
            self.session = onnxruntime_session(self.path, threads, spinning)
        except Exception as error:  # ONNX Runtime raises its own types for a file it cannot read
            raise ValueError(f'ONNX Runtime cannot load {self.path}: {error}') from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if METADATA_KEY not in metadata or names != (list(INPUT_NAMES), list(OUTPUT_NAMES)):
            raise ValueError(f'{self.path} is no whole detector exported by tools/export.py --whole-model (inputs '
                             f'{names[0]}, outputs {names[1]}, metadata keys {sorted(metadata)})')
        self.settings = DetectorSettings.from_json(metadata[METADATA_KEY])
        image_input, boxes_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.batch, _, height, width = image_input.shape
        self.input_size: tuple[int, int] = (height, width)
        self.max_detections: int = boxes_output.shape[1]
        if input_size is not None and tuple(input_size) != self.input_size:
            raise ValueError(f'{self.path.name} was exported at {_size_text(self.input_size)}, not '
                             f'{_size_text(input_size)}: export one file per input size')
        if config is not None:
            self.check_config(config)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.settings.classes

    def check_config(self, config: str | Path | Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless the file was exported from ``config`` (model fingerprint and test resize)."""
        name = Path(config).name if isinstance(config, (str, Path)) else 'the config given'
        if isinstance(config, (str, Path)):
            from mmengine.config import Config
            config = Config.fromfile(str(config))
        fingerprint = model_fingerprint(config['model'])
        if fingerprint != self.settings.fingerprint:
            raise ValueError(f'{self.path.name} was exported from another model config ({self.settings.config}, '
                             f'fingerprint {self.settings.fingerprint}) than {name} (fingerprint {fingerprint}): run '
                             f'it with the config it was exported from, or export it from {name}')
        from_config = resize_settings(detection_test_pipeline(config))
        if from_config != self.settings.resize:
            raise ValueError(f'{self.path.name} resizes images as {self.settings.resize}, but {name}\'s test '
                             f'pipeline as {from_config}: export it again from {name}')

    def prepare(self, image: ImageInput, channel_order: str = 'bgr') -> PreparedImage:
        """The test pipeline on one image (an HxWx3 uint8 array in ``channel_order``, or a path to an image file)."""
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f'channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}')
        img_path = None
        if isinstance(image, (str, Path)):
            img_path, image, channel_order = str(image), read_image(image), 'bgr'
        image = _check_image(image, channel_order)
        settings = self.settings
        height, width = image.shape[:2]
        (new_h, new_w), scale_factor = resized_shape(height, width, settings.resize)
        input_h, input_w = self.input_size
        if new_h > input_h or new_w > input_w:
            raise ValueError(f'a {height}x{width} image resizes to {new_h}x{new_w} (the test pipeline\'s Resize '
                             f'{settings.resize}), larger than the file\'s input {_size_text(self.input_size)}: '
                             f'export at a size that holds it')
        resized = cv2.resize(image, (new_w, new_h), interpolation=CV2_INTERPOLATIONS[settings.resize['interpolation']])
        # mmdet loads BGR and its preprocessor flips to RGB when asked; an RGB array flips the other way.
        if settings.flip_channels == (channel_order == 'bgr'):
            resized = resized[..., ::-1]
        pixels = resized.astype(np.float32)
        if settings.mean is not None:
            pixels = (pixels - np.asarray(settings.mean, np.float32)) / np.asarray(settings.std, np.float32)
        padded = np.full((3, input_h, input_w), settings.pad_value, dtype=np.float32)
        padded[:, :new_h, :new_w] = pixels.transpose(2, 0, 1)
        return PreparedImage(padded, (height, width), (new_h, new_w), scale_factor, img_path)

    def run_prepared(self, prepared: Sequence[PreparedImage]) -> list[Detections]:
        """Detections of prepared images, run in batches of the file's batch size."""
        batch = self.batch
        detections = []
        for start in range(0, len(prepared), batch):
            group = list(prepared[start:start + batch])
            inputs = np.zeros((batch, 3, *self.input_size), dtype=np.float32)
            shapes = np.ones((batch, 2), dtype=np.float32)  # unused slots of a last, short batch: a 1x1 image
            for slot, item in enumerate(group):
                inputs[slot], shapes[slot] = item.input, item.img_shape
            outputs = self.session.run(None, dict(zip(INPUT_NAMES, (inputs, shapes))))
            detections += [self._detections(item, *(output[slot] for output in outputs))
                           for slot, item in enumerate(group)]
        return detections

    def _detections(self, item: PreparedImage, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    masks: np.ndarray, count: np.ndarray) -> Detections:
        count = int(count)
        # mmdet's FCNMaskHead divides the boxes of the resized image by the scale factor (float32).
        w_scale, h_scale = item.scale_factor
        bboxes = boxes[:count] / np.asarray([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
        pasted = paste_masks(masks[:count], bboxes, *item.ori_shape, self.settings.mask_threshold)
        return Detections(bboxes.astype(np.float32), scores[:count].copy(), labels[:count].astype(np.int64),
                          pasted, item.ori_shape, item.img_shape, item.scale_factor, item.img_path,
                          masks[:count].copy(), self.settings.mask_threshold)

    def detect(self, images: ImageInput | Sequence[ImageInput], channel_order: str = 'bgr') -> list[Detections]:
        """Detections of one image or a list of them (HxWx3 uint8 arrays in ``channel_order`` or image paths)."""
        images = [images] if isinstance(images, (np.ndarray, str, Path)) else list(images)
        return self.run_prepared([self.prepare(image, channel_order) for image in images])

    def predict(self, images: ImageInput | Sequence[ImageInput], channel_order: str = 'bgr',
                metainfo: Sequence[Mapping[str, Any]] | None = None) -> list:
        """:meth:`detect` as mmdet ``DetDataSample`` s (one per image; ``metainfo`` adds keys per image, e.g.
        ``img_id`` for ``CocoMetric``). Imports torch, mmengine and mmdet."""
        detections = self.detect(images, channel_order)
        if metainfo is not None and len(metainfo) != len(detections):
            raise ValueError(f'metainfo has {len(metainfo)} entries for {len(detections)} images')
        return [item.to_data_sample(None if metainfo is None else metainfo[i]) for i, item in enumerate(detections)]


def _size_text(size: Sequence[int]) -> str:
    return 'x'.join(str(side) for side in size)


def detection_test_pipeline(config: Mapping[str, Any]) -> list:
    """The test pipeline of a detection config: its test dataloader's dataset's (as mmdet's
    ``get_test_pipeline_cfg``), else its ``test_pipeline``."""
    dataset = (config.get('test_dataloader') or {}).get('dataset') or {}
    while 'pipeline' not in dataset and 'dataset' in dataset:  # dataset wrappers
        dataset = dataset['dataset']
    pipeline = dataset.get('pipeline', config.get('test_pipeline'))
    if not pipeline:
        raise ValueError('the config has no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)')
    return list(pipeline)


def onnxruntime_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (None: ONNX Runtime's default).

    ``spinning=False`` stops its idle worker threads from busy-waiting after a run, which would take the
    cores from whatever runs next (a benchmark alternating runtimes).
    """
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    # One operator at a time, as PyTorch eager runs them, so that both use the same threads.
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors only: its constant folding warns about every CastLike node it leaves to run time, which is harmless.
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
