"""Exporting a backbone (optionally with its neck, or a whole segmentor) to ONNX or torch.export, and running
the exported file (whole Mask R-CNN detectors: ``plugin.deploy.detector`` and ``plugin.deploy.runner``).

Both formats start from one ``torch.export`` trace in inference mode (eval, no gradient);
``torch.onnx.export`` translates that program to ONNX (its default, dynamo-based exporter).
While exporting, the backbones pick their exportable code paths (see
``plugin.models.utils.export_mode``); everything else is the model as it runs in PyTorch, so
SparseViT's window ranking (a ``TopK`` over the per-window scores) stays data-dependent.
"""
import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from ..models.backbones import DynamicViT, EfficientFormer, EfficientFormerSupernet, EfficientFormerV2, SparseViTSwin
from .runner import onnxruntime_session as runner_session

FORMATS = ('onnx', 'torch-export')
SUFFIXES = {'onnx': '.onnx', 'torch-export': '.pt2'}
EXPORTABLE_BACKBONES = (SparseViTSwin, EfficientFormer, EfficientFormerV2, DynamicViT)
# The exported graph's input (``FeatureExtractor.forward``'s argument); outputs are feature0, feature1, ...
INPUT_NAME = 'image'

Runner = Callable[[torch.Tensor], list[torch.Tensor]]


class ExportError(ValueError):
    """The exporter refused the model, or the exported file does not compute what PyTorch computes."""


class FeatureExtractor(nn.Module):
    """A backbone, then optionally a neck: the feature maps that a detector's or segmentor's heads consume."""

    def __init__(self, backbone: nn.Module, neck: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(image)
        return tuple(features if self.neck is None else self.neck(features))


class SegmentorLogits(nn.Module):
    """An mmseg ``EncoderDecoder``'s tensor forward: backbone, neck and decode head, the per-class logits at the
    decode head's stride (before mmseg resizes them to the image and takes the arg-max)."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    @property
    def backbone(self) -> nn.Module:
        return self.segmentor.backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.segmentor(image, mode='tensor'), )


def check_backbone(model: nn.Module) -> None:
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, EfficientFormerSupernet):
        raise TypeError('EfficientFormerSupernet is a training-time supernet: slim it first (tools/slim.py) and '
                        'export the EfficientFormer it writes')
    if not isinstance(backbone, EXPORTABLE_BACKBONES):
        names = ', '.join(cls.__name__ for cls in EXPORTABLE_BACKBONES)
        raise TypeError(f'the model\'s backbone is {type(backbone).__name__}; exporting supports this project\'s '
                        f'backbones: {names}')


def feature_extractor(model: nn.Module, with_neck: bool = False) -> FeatureExtractor:
    """The backbone (and with ``with_neck`` the neck) of an mmdet/mmseg/mmdet3d model, in eval mode."""
    check_backbone(model)
    neck = None
    if with_neck:
        neck = getattr(model, 'neck', None)
        if not isinstance(neck, nn.Module):
            raise ValueError(f'--with-neck: {type(model).__name__} has no neck')
    return FeatureExtractor(model.backbone, neck).eval()


def segmentor_logits(model: nn.Module) -> SegmentorLogits:
    """The whole network of an mmseg ``EncoderDecoder`` (see :class:`SegmentorLogits`), in eval mode (a whole
    Mask R-CNN: :class:`plugin.deploy.detector.MaskRCNNDetections`)."""
    from mmseg.models.segmentors import EncoderDecoder
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f'segmentor_logits takes an mmseg EncoderDecoder (backbone, neck, decode head), got '
                        f'{type(model).__name__}')
    check_backbone(model)
    return SegmentorLogits(model).eval()


# Backbones whose trace depends on the input size in Python, so that only static-size exports hold.
STATIC_SIZE_ONLY = {
    SparseViTSwin: 'the windows each block keeps, floor((1 - ratio) x windows), and whether a stage pads its map '
                   'are Python integers of the input size',
    DynamicViT: 'the tokens each pruning location keeps, int(keep ratio x tokens), are Python integers of the '
                'input size',
}
# Sides a dynamic-size export accepts. From 64 on, every stride-32 map has more than one row and column, which
# the traced broadcasting assumes; named dims make torch.export fail, not specialise, where a model needs more.
DYNAMIC_SIDE_RANGE = (64, 4096)


def dynamic_size_shapes() -> dict[str, dict[int, object]]:
    """``dynamic_shapes`` of ``torch.export`` for an image input whose height and width may vary."""
    low, high = DYNAMIC_SIDE_RANGE
    return {INPUT_NAME: {2: torch.export.Dim('height', min=low, max=high),
                         3: torch.export.Dim('width', min=low, max=high)}}


def _exporter_message(error: Exception) -> str:
    """The useful part of an exporter's error: torch.onnx's exception summary, else the first lines."""
    text = str(error)
    start = text.find('## Exception summary')
    if start >= 0:
        text = text[start + len('## Exception summary'):]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f'{type(error).__name__}: ' + ' '.join(lines[:4])


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints its progress to stdout, torch.export warns about every traced attribute, and onnx_ir
    logs a warning for each empty list attribute (a whole detector has some; ONNX reads them as the INTS they are)."""
    onnx_ir_logger = logging.getLogger('onnx_ir')
    level = onnx_ir_logger.level
    onnx_ir_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        onnx_ir_logger.setLevel(level)


def trace(extractor: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...],
          dynamic_size: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``extractor`` (a module with a ``backbone``: :class:`FeatureExtractor`,
    :class:`SegmentorLogits`, ``detector.MaskRCNNDetections``) on ``example`` (its one input, or a tuple of its
    inputs) in inference mode; ``dynamic_size`` lets height and width of a single image input vary (the program
    then checks at run time the conditions its trace assumed)."""
    extractor.eval()
    inputs = example if isinstance(example, tuple) else (example, )
    static_only = next((reason for cls, reason in STATIC_SIZE_ONLY.items() if isinstance(extractor.backbone, cls)),
                       None)
    if dynamic_size and static_only:
        raise ValueError(f'{type(extractor.backbone).__name__} exports at static sizes only ({static_only}, which '
                         f'torch.export would fix to the export size): export one file per input size')
    shapes = dynamic_size_shapes() if dynamic_size else None
    if dynamic_size and (len(inputs) != 1 or not all(DYNAMIC_SIDE_RANGE[0] <= side <= DYNAMIC_SIDE_RANGE[1]
                                                     for side in inputs[0].shape[2:])):
        raise ValueError(f'a dynamic-size export takes one image input with sides in {list(DYNAMIC_SIDE_RANGE)}, '
                         f'and so must the example; got {[tuple(x.shape) for x in inputs]}')
    try:
        with torch.no_grad(), _quiet_exporter():
            return torch.export.export(extractor, inputs, dynamic_shapes=shapes)
    except Exception as error:  # any exporter failure becomes one message
        name = type(extractor.backbone).__name__
        hint = ('; the traced model depends on the input size in Python: export at a static size, one file per '
                'size') if dynamic_size else ''
        raise ExportError(f'torch.export could not trace {name}{" at a dynamic size" if dynamic_size else ""}: '
                          f'{_exporter_message(error)}{hint}') from error


def check_any_size(program: torch.export.ExportedProgram, image: torch.Tensor) -> None:
    """Run a dynamic-size ``program`` on ``image`` (of another size than at export): the guards that torch.export
    put where the traced model depends on the size in Python fail there (and ONNX drops those guards)."""
    try:
        with torch.no_grad():
            program.module()(image)
    except Exception as error:  # a failed guard: the program holds only at sizes like the export's
        raise ExportError(f'the exported program does not hold at {tuple(image.shape[2:])}: the traced model '
                          f'depends on the input size ({_exporter_message(error)}); export at a static size, '
                          f'one file per size') from error


def save(program: torch.export.ExportedProgram, fmt: str, path: Path, output_names: Sequence[str] | None = None,
         metadata: dict[str, str] | None = None) -> Path:
    """Write ``program`` as ``fmt`` (``'onnx'``: translated by torch.onnx, outputs named ``output_names`` (default
    feature0, feature1, ...), with ``metadata`` as the model's metadata properties; ``'torch-export'``: a .pt2
    archive, which holds no metadata)."""
    if fmt not in FORMATS:
        raise ValueError(f'format must be one of {FORMATS}, got {fmt!r}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == 'torch-export':
        if metadata:
            raise ValueError('a torch.export archive holds no metadata: write metadata with the onnx format')
        torch.export.save(program, path)
        return path
    num_outputs = len(program.graph_signature.user_outputs)
    names = list(output_names) if output_names is not None else [f'feature{i}' for i in range(num_outputs)]
    try:
        with _quiet_exporter():
            # onnxscript's graph optimizer took half of a translation; ONNX Runtime folds and fuses the graph
            # itself when it loads it, to the same speed and outputs.
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, output_names=names, optimize=False)
    except Exception as error:  # any exporter failure becomes one message
        raise ExportError(f'torch.onnx could not translate the program: {_exporter_message(error)}') from error
    onnx_program.model.metadata_props.update(metadata or {})
    onnx_program.save(str(path))
    return path


def onnxruntime_session(path: Path, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's count); see
    :func:`plugin.deploy.runner.onnxruntime_session`."""
    return runner_session(path, threads or torch.get_num_threads(), spinning)


def load_runner(path: Path, fmt: str, threads: int | None = None, spinning: bool = True) -> Runner:
    """A callable that runs the exported file on an image batch and returns its outputs as tensors
    (ONNX: in ONNX Runtime on the CPU, see :func:`onnxruntime_session`; torch-export: the program loaded
    by ``torch.export.load``)."""
    if fmt not in FORMATS:
        raise ValueError(f'format must be one of {FORMATS}, got {fmt!r}')
    if fmt == 'torch-export':
        module = torch.export.load(str(path)).module()

        def run_program(image: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return list(module(image))
        return run_program

    try:
        session = onnxruntime_session(path, threads, spinning)
    except Exception as error:  # ONNX Runtime raises its own types for a file it cannot run
        raise ExportError(f'ONNX Runtime cannot load {path}: {error}') from error

    def run_session(image: torch.Tensor) -> list[torch.Tensor]:
        outputs = session.run(None, {INPUT_NAME: image.detach().cpu().numpy()})
        return [torch.from_numpy(output) for output in outputs]
    return run_session


def relative_differences(outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> list[float]:
    """Per output, ``max |output - reference| / max |reference|`` (shapes must agree)."""
    if len(outputs) != len(references):
        raise ExportError(f'the exported model returns {len(outputs)} outputs, PyTorch {len(references)}')
    differences = []
    for i, (output, reference) in enumerate(zip(outputs, references)):
        if tuple(output.shape) != tuple(reference.shape):
            raise ExportError(f'output {i} has shape {tuple(output.shape)} in the exported model, '
                              f'{tuple(reference.shape)} in PyTorch')
        scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
        differences.append(((output.to(reference.dtype) - reference).abs().max() / scale).item())
    return differences


def compare_with_pytorch(run: Runner, extractor: nn.Module,
                         images: Sequence[torch.Tensor]) -> list[dict[str, object]]:
    """Run the exported model and ``extractor`` on each image batch: per batch its size, the number of outputs,
    the largest absolute and the largest relative difference (see :func:`relative_differences`)."""
    rows = []
    for image in images:
        with torch.no_grad():
            references = list(extractor(image))
        try:
            outputs = run(image)
        except Exception as error:  # a guard of the program or ONNX Runtime refusing the input
            raise ExportError(f'the exported model fails on a {tuple(image.shape)} input: '
                              f'{_exporter_message(error)}') from error
        relative = relative_differences(outputs, references)
        absolute = max((output.to(ref.dtype) - ref).abs().max().item() for output, ref in zip(outputs, references))
        rows.append({'input': 'x'.join(map(str, image.shape[2:])), 'outputs': len(outputs),
                     'max abs diff': absolute, 'max relative diff': max(relative)})
    return rows
