"""Whole models as users run them: a packed batch to data samples, split into its parts, dense against pruned.

Each row is one model of configs/ built as its config says (random weights, no checkpoint), run with
``model.test_step`` on a packed batch of photographs (scikit-image's samples, resized to the task's size):
data preprocessing, backbone, neck, and heads with their post-processing (proposals, RoIs, NMS, masks
pasted at the image size). Every model of a task is timed in one alternating loop per batch size, so a
change of the machine's load hits all of them alike; a part's time comes from forward hooks on the
modules during those same runs (the heads are the rest of the pass).

Both models of a pair do the same work outside the backbone: the detection counts are held (RoI
score threshold 0, so every image keeps ``--detections`` detections, mmdet's ``max_per_img`` by default;
the table shows the counts it measured). A pruned SparseViT or DynamicViT model is compared with its dense
model at the same weights; EfficientFormer with the dense SparseViT-Swin-T model of its task (another
network: only time and MACs compare). Columns:

- ``whole speedup`` = dense ms / ms end to end; ``backbone speedup`` = the same for the backbone alone;
- ``Amdahl bound`` = 1 / ((1 - f) + f / backbone speedup), f = the dense model's backbone share of its
  time: the whole-model speedup that the backbone's speedup alone allows;
- ``eff_whole`` = whole speedup / Amdahl bound (1.0: the only loss end to end is what the backbone
  does not own; above 1: the parts after the backbone got faster too);
- ``dense head ms``: of the heads, the forward of the head that runs on the neck's maps (Mask R-CNN's RPN
  head, FCOS3D's and PGD's heads: their convolutions; their post-processing stays in the rest); blank for
  Semantic FPN, whose decode head mmseg calls without module hooks;
- ``MACs bound`` = the dense model's time / the time it would take if its backbone, neck, dense head and
  the rest of its heads each took its time scaled by this row's MACs ratio for that part: the whole
  speedup of a model that runs at the dense model's speed per MAC, the work MACs do not count (RoIAlign,
  NMS, mask pasting) left as it is; ``eff_macs`` = whole speedup / MACs bound;
- MACs per part from torch's counter in one pass (attention included; mmcv's RoIAlign and NMS are
  not counted).

Runtimes (``--runtimes``): ``torch`` (eager; on a GPU also ``graph``: the backbone replayed from a CUDA graph,
for rows whose backbone is not read through a forward record) and ``ort``: Mask R-CNN exported whole
(``plugin.deploy.export_mask_rcnn``) and run by ``plugin.deploy.OnnxDetector`` in ONNX Runtime on the CPU, from
the image to pasted masks, beside its backbone exported alone (its ``backbone ms``); both runtimes with the same
threads, every ONNX Runtime model timed in one alternating loop (idle threads do not spin). Semantic FPN's
exported logits and the mono-3D heads (mmcv's deformable convolution does not export) have no ONNX Runtime rows.
"""
import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..utils import capture_cuda_graph, count_macs_per_module
from ..utils.package_data import config_path

PARTS = ('preprocess', 'backbone', 'neck', 'heads')
# Timed inside the heads: the dense head's forward.
DENSE_HEAD = 'dense head'


@dataclasses.dataclass(frozen=True)
class WholeModel:
    """One row: a config, what to change in its backbone, and the row it is compared with."""
    name: str
    config: str
    backbone: dict = dataclasses.field(default_factory=dict)
    reference: str | None = None
    # True: built from the reference's weights (a pruned variant); False: another network.
    same_weights: bool = True


@dataclasses.dataclass(frozen=True)
class Task:
    """A detector or segmentor family at its evaluation size, and its rows (the dense reference first)."""
    name: str
    size: tuple[int, int]
    models: tuple[WholeModel, ...]


SWIN_DET = 'sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672.py'
# Sparse all the way (SparseFPN and SparseRPNHead): the same weights as SWIN_DET's, other module types.
SPARSE_DET = 'sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_sparse-neck_fpn_amp-ms-crop-3x_coco-672_cfg2.py'
SPARSE_LEARNED_DET = ('sparsevit/mask-rcnn_sparsevit-swin-t-learned-scorer_sparse-neck_fpn_amp-ms-crop-3x_coco-672'
                      '_cfg2.py')
SWIN_SEG = 'sparsevit/fpn_sparsevit-swin-t-p4-w7_4xb4-160k_ade20k-512x512.py'
SPARSE_SEG = 'sparsevit/fpn_sparsevit-swin-t-p4-w7_sparse-neck_4xb4-160k_ade20k-512x512_finetune_cfg2.py'
SWIN_FCOS3D = 'mono3d/fcos3d_sparsevit-swin-t-p4-w7_fpn_head-gn_8xb2-1x_nus-mono3d.py'
SPARSE_FCOS3D = 'mono3d/fcos3d_sparsevit-swin-t-p4-w7_sparse-neck_fpn_head-gn_8xb2-1x_nus-mono3d_cfg2.py'
SWIN_PGD = 'mono3d/pgd_sparsevit-swin-t-p4-w7_fpn_head-gn_4xb3-4x_kitti-mono3d.py'
DENSE = 'SparseViT-Swin-T dense'
TASKS = {task.name: task for task in (
    Task('mask-rcnn', (672, 672), (
        WholeModel(DENSE, SWIN_DET),
        WholeModel('SparseViT-Swin-T cfg1', SWIN_DET, dict(pruning_ratios='cfg1'), DENSE),
        WholeModel('SparseViT-Swin-T cfg2', SWIN_DET, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('SparseViT-Swin-T cfg3', SWIN_DET, dict(pruning_ratios='cfg3'), DENSE),
        WholeModel('SparseViT-Swin-T uniform 0.6', SWIN_DET, dict(pruning_ratios=0.6), DENSE),
        WholeModel('SparseViT-Swin-T learned scorer cfg2', SWIN_DET, dict(pruning_ratios='cfg2', scorer='learned'),
                   DENSE),
        WholeModel('SparseViT-Swin-T cfg2, sparse all the way', SPARSE_DET, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('SparseViT-Swin-T uniform 0.6, sparse all the way', SPARSE_DET, dict(pruning_ratios=0.6), DENSE),
        WholeModel('SparseViT-Swin-T learned scorer cfg2, sparse all the way', SPARSE_LEARNED_DET,
                   dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('EfficientFormer-L1', 'efficientformer/mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
                   reference=DENSE, same_weights=False),
        WholeModel('EfficientFormerV2-S2', 'efficientformer/mask-rcnn_efficientformerv2-s2_fpn_1x_coco.py',
                   reference=DENSE, same_weights=False),
        WholeModel('DynamicViT-DeiT-S dense', 'dynamicvit/mask-rcnn_dynamicvit-deit-s-r0.7_fpn_1x_coco.py',
                   dict(keep_ratio=1.0)),
        WholeModel('DynamicViT-DeiT-S r0.7', 'dynamicvit/mask-rcnn_dynamicvit-deit-s-r0.7_fpn_1x_coco.py',
                   reference='DynamicViT-DeiT-S dense'),
    )),
    Task('semantic-fpn', (512, 512), (
        WholeModel(DENSE, SWIN_SEG),
        WholeModel('SparseViT-Swin-T cfg2', SWIN_SEG, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('SparseViT-Swin-T cfg2, sparse FPN', SPARSE_SEG, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('EfficientFormer-L1', 'efficientformer/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py',
                   reference=DENSE, same_weights=False),
    )),
    Task('fcos3d', (928, 1600), (
        WholeModel(DENSE, SWIN_FCOS3D),
        WholeModel('SparseViT-Swin-T cfg2', SWIN_FCOS3D, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('SparseViT-Swin-T cfg2, sparse all the way', SPARSE_FCOS3D, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('EfficientFormer-L3', 'mono3d/fcos3d_efficientformer-l3_fpn_head-gn_8xb2-1x_nus-mono3d.py',
                   reference=DENSE, same_weights=False),
    )),
    Task('pgd', (384, 1248), (
        WholeModel(DENSE, SWIN_PGD),
        WholeModel('SparseViT-Swin-T cfg2', SWIN_PGD, dict(pruning_ratios='cfg2'), DENSE),
        WholeModel('EfficientFormer-L3', 'mono3d/pgd_efficientformer-l3_fpn_head-gn_4xb3-4x_kitti-mono3d.py',
                   reference=DENSE, same_weights=False),
    )),
)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--tasks', nargs='+', choices=sorted(TASKS), default=['mask-rcnn', 'semantic-fpn'],
                        help='which model families (fcos3d and pgd need mmdet3d)')
    parser.add_argument('--rows', nargs='+', default=None, metavar='NAME',
                        help='only these rows of the tasks (their dense references are always run)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 4], help='batch sizes')
    parser.add_argument('--size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='input size of every task instead of its own (mask-rcnn 672x672, semantic-fpn '
                             '512x512, fcos3d 928x1600, pgd 384x1248)')
    parser.add_argument('--threads', type=int, default=None, help='intra-op threads (default: torch\'s)')
    parser.add_argument('--runtimes', nargs='+', choices=('torch', 'graph', 'ort'), default=['torch', 'ort'],
                        help='PyTorch eager; the backbone as a CUDA graph (GPU); ONNX Runtime (Mask R-CNN, CPU)')
    parser.add_argument('--ort-batches', type=int, nargs='+', default=[1],
                        help='batch sizes of the ONNX Runtime rows (one export per model and batch size)')
    parser.add_argument('--detections', type=int, default=None,
                        help='detections every image keeps (default: the config\'s max_per_img, 100 for Mask '
                             'R-CNN)')


def build_model(spec: WholeModel, reference: nn.Module | None, detections: int | None = None) -> nn.Module:
    """The config's model with the backbone changes of ``spec``, detections held (see the module docstring),
    with ``reference``'s weights where ``spec.same_weights``; eval mode, on the CPU."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(str(config_path(spec.config)))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.update(init_cfg=None, **spec.backbone)
    if 'convert_weights' in cfg.model.backbone:
        cfg.model.backbone.convert_weights = False
    hold_detection_counts(cfg.model, detections)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    # As mmdet's init_detector: the exports read the test pipeline and class names from it.
    model.cfg = cfg
    if reference is not None and spec.same_weights:
        # A learned scorer's predictors are the only weights the dense model lacks: they keep their random init.
        missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
        if unexpected or any('window_scorer' not in key and 'score_predictor' not in key for key in missing):
            raise RuntimeError(f'{spec.name} does not share the weights of {spec.reference}: missing {missing}, '
                               f'unexpected {unexpected}')
    return model.eval()


def dense_head_name(model: nn.Module) -> str | None:
    """The attribute of the head that runs on the neck's whole maps and is called as a module (so hooks see it):
    a two-stage detector's RPN head, a one-stage (mono-3D) detector's head; None for a segmentor, whose decode
    head mmseg runs through its ``forward``."""
    for name in ('rpn_head', 'bbox_head'):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def hold_detection_counts(model_cfg, detections: int | None = None) -> None:
    """Every image keeps ``detections`` (default: ``max_per_img``) detections whatever its scores (random
    weights score low)."""
    test_cfg = model_cfg.get('test_cfg') or {}
    final = test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg
    if 'score_thr' in final:
        final.score_thr = 0.0
        if detections is not None:
            final.max_per_img = detections


def photographs(size: tuple[int, int], batch: int) -> list[np.ndarray]:
    """``batch`` of scikit-image's sample photographs as RGB uint8 images resized to ``size`` (H, W)."""
    import cv2
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [cv2.resize(images[i % len(images)], (size[1], size[0]), interpolation=cv2.INTER_AREA)
            for i in range(batch)]


def packed_batch(scope: str, images: Sequence[np.ndarray]) -> dict:
    """What a data loader gives ``test_step``: uint8 CHW tensors (BGR, as mmcv loads) and data samples."""
    height, width = images[0].shape[:2]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1., 1.), flip=False)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    elif scope == 'mmdet3d':
        from mmdet3d.structures import CameraInstance3DBoxes
        from mmdet3d.structures import Det3DDataSample as Sample
        # A KITTI-like camera: focal length and principal point of an image this size.
        cam2img = [[0.8 * width, 0., width / 2, 0.], [0., 0.8 * width, height / 2, 0.], [0., 0., 1., 0.],
                   [0., 0., 0., 1.]]
        meta.update(cam2img=cam2img, box_type_3d=CameraInstance3DBoxes, box_mode_3d=None)
    else:
        raise ValueError(f'no packed batch for default_scope {scope!r}')
    inputs = [torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))) for image in images]
    # mmdet3d's preprocessor reads the images of a sample from a dict (Pack3DDetInputs: inputs['img']).
    return dict(inputs=dict(img=inputs) if scope == 'mmdet3d' else inputs,
                data_samples=[Sample(metainfo=meta) for _ in images])


def counted_outputs(outputs: Sequence) -> str:
    """Detections per image (mmdet, mmdet3d), or '' for dense outputs."""
    counts = []
    for sample in outputs:
        instances = sample.get('pred_instances') if hasattr(sample, 'get') else None
        if instances is None:
            instances = sample.get('pred_instances_3d') if hasattr(sample, 'get') else None
        if instances is not None:
            counts.append(str(len(instances)))
    return '/'.join(counts)


class PartTimer:
    """Wall-clock time of each part of a model's pass, from forward hooks on its preprocessor, backbone and
    neck; the heads are the rest of the pass."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        head = dense_head_name(model)
        self.modules = {'preprocess': model.data_preprocessor, 'backbone': model.backbone,
                        'neck': getattr(model, 'neck', None), DENSE_HEAD: getattr(model, head) if head else None}
        self.started: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.handles = []
        for part, module in self.modules.items():
            if module is not None:
                self.handles.append(module.register_forward_pre_hook(self._start(part)))
                self.handles.append(module.register_forward_hook(self._stop(part)))

    def _now(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _start(self, part: str) -> Callable:
        def hook(module, args):
            self.started[part] = self._now()
        return hook

    def _stop(self, part: str) -> Callable:
        def hook(module, args, output):
            self.spent[part] = self.spent.get(part, 0.) + self._now() - self.started.pop(part)
        return hook

    def time(self, run: Callable[[], object]) -> dict[str, float]:
        """Milliseconds of ``run()`` per part (``PARTS``), of the dense head inside the heads where the model has
        one, and in total."""
        self.spent = {}
        start = self._now()
        run()
        total = self._now() - start
        parts = {part: self.spent.get(part, 0.) * 1e3 for part in PARTS[:3]}
        parts['heads'] = total * 1e3 - sum(parts.values())
        if self.modules[DENSE_HEAD] is not None:
            parts[DENSE_HEAD] = self.spent.get(DENSE_HEAD, 0.) * 1e3
        parts['total'] = total * 1e3
        return parts


def alternating_part_latencies(runs: Sequence[Callable[[], dict[str, float]]], warmup: int, repeats: int,
                               desc: str) -> list[dict[str, float]]:
    """Per run, the median of each part over ``repeats`` rounds in alternation (each round one run later)."""
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[dict[str, float]]] = [[] for _ in runs]
    with tqdm(total=repeats * len(runs), desc=desc, unit='pass', leave=False) as progress:
        for round_index in range(repeats):
            for i in range(len(runs)):
                k = (round_index + i) % len(runs)
                times[k].append(runs[k]())
                progress.update()
    return [{key: statistics.median(t[key] for t in run_times) for key in run_times[0]} for run_times in times]


def macs_per_part(model: nn.Module, data: dict) -> dict[str, float]:
    """GMACs of one ``test_step`` per part (heads = everything outside preprocessor, backbone and neck; the dense
    head's are also given apart where the model has one)."""
    per_module = count_macs_per_module(lambda: model.test_step(data))
    root = type(model).__name__
    macs = {'backbone': per_module.get(f'{root}.backbone', 0), 'neck': per_module.get(f'{root}.neck', 0)}
    outside = per_module.get(f'{root}.data_preprocessor', 0)
    macs['heads'] = per_module.get('Global', 0) - macs['backbone'] - macs['neck'] - outside
    head = dense_head_name(model)
    if head is not None:
        macs[DENSE_HEAD] = per_module.get(f'{root}.{head}', 0)
    macs['total'] = per_module.get('Global', 0)
    return {part: value / 1e9 for part, value in macs.items()}


def macs_bound(reference_ms: dict[str, float], reference_macs: dict[str, float], macs: dict[str, float]) -> float:
    """The whole speedup over the reference if each part took the reference's time for it scaled by its MACs ratio
    ``macs[part] / reference_macs[part]``: backbone, neck, dense head (where both were timed) and the rest of the
    heads, preprocessing as it is. The rest's work that MACs do not count (RoIAlign, NMS, pasting) scales with the
    rest's MACs, equal in two rows of one network."""
    ms = {part: reference_ms[part] for part in PARTS[1:]}
    work = {part: (reference_macs[part], macs[part]) for part in PARTS[1:]}
    if DENSE_HEAD in reference_ms and DENSE_HEAD in reference_macs and DENSE_HEAD in macs:
        ms[DENSE_HEAD] = reference_ms[DENSE_HEAD]
        ms['heads'] -= reference_ms[DENSE_HEAD]
        work[DENSE_HEAD] = (reference_macs[DENSE_HEAD], macs[DENSE_HEAD])
        work['heads'] = (reference_macs['heads'] - reference_macs[DENSE_HEAD], macs['heads'] - macs[DENSE_HEAD])
    # A part without MACs (no neck) keeps its time.
    scaled = sum(ms[part] * (mine / theirs if theirs > 0 else 1.0) for part, (theirs, mine) in work.items())
    return reference_ms['total'] / (reference_ms['preprocess'] + scaled)


def amdahl_bound(backbone_share: float, backbone_speedup: float) -> float:
    """The whole-model speedup that speeding up a part of share ``backbone_share`` by ``backbone_speedup`` allows."""
    return 1.0 / ((1.0 - backbone_share) + backbone_share / backbone_speedup)


class CUDAGraphBackbone(nn.Module):
    """A backbone replayed from a CUDA graph captured at the shape of the first input (GPU timing only): the input
    is copied into the captured buffer, the graph replayed, the captured output returned."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.graph = None

    def forward(self, x: torch.Tensor):
        if self.graph is None or x.shape != self.static_input.shape:
            self.static_input = x.clone()
            self.graph, self.static_output = capture_cuda_graph(lambda: self.backbone(self.static_input))
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


def torch_latencies(models: dict[str, nn.Module], data: dict, args: argparse.Namespace,
                    desc: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per model, the median ms of each part of ``test_step(data)`` in one alternating loop, and its detections."""
    runs, counts = [], {}
    for name, model in models.items():
        timer = PartTimer(model, args.device)
        with torch.no_grad():
            counts[name] = counted_outputs(model.test_step(data))
        runs.append(lambda model=model, timer=timer: timer.time(lambda: model.test_step(data)))
    with torch.no_grad():
        return dict(zip(models, alternating_part_latencies(runs, args.warmup, args.repeats, desc))), counts


def graph_models(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The models whose backbone can be replayed from a CUDA graph, with it so (a sparse detector reads the
    backbone's forward record, which a replay does not give)."""
    from ..models.detectors.sparse import SparseNeckMixin
    graphed = {}
    for name, model in models.items():
        if not isinstance(model, SparseNeckMixin):
            model.backbone = CUDAGraphBackbone(model.backbone)
            graphed[name] = model
    return graphed


def onnx_runtime_latencies(models: dict[str, nn.Module], specs: dict[str, WholeModel], size: tuple[int, int],
                           batch: int, images: list[np.ndarray], args: argparse.Namespace
                           ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per Mask R-CNN, ONNX Runtime's median ms from the images to the detections ('total') and of its backbone
    exported alone ('backbone'), every file timed in one alternating loop; and the detections per image. A model
    that does not export is left out with its reason printed."""
    from ..deploy import (
        ExportError,
        FeatureExtractor,
        OnnxDetector,
        export_mask_rcnn,
        load_runner,
        save,
        trace,
        with_exact_resize,
    )
    runs, counts, names = [], {}, []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as directory:
        for index, (name, model) in enumerate(tqdm(models.items(), desc=f'exporting to ONNX (batch {batch})',
                                                   unit='model', leave=False)):
            try:
                path, _ = export_mask_rcnn(with_exact_resize(model.cfg, size), model,
                                           Path(directory) / f'{index}.onnx', size, specs[name].config,
                                           dict(specs[name].backbone), batch)
            except (ExportError, TypeError, ValueError) as error:
                print(f'ONNX Runtime: {name} has no row, its export failed: {error}')
                continue
            detector = OnnxDetector(path, threads=threads, spinning=False)
            prepared = [detector.prepare(image, channel_order='rgb') for image in images]
            counts[name] = '/'.join(str(len(d.scores)) for d in detector.run_prepared(prepared))
            example = torch.from_numpy(np.stack([item.input for item in prepared]))
            backbone_path = save(trace(FeatureExtractor(model.backbone), example), 'onnx',
                                 Path(directory) / f'{index}_backbone.onnx')
            run_backbone = load_runner(backbone_path, 'onnx', threads=threads, spinning=False)
            runs += [lambda detector=detector: _milliseconds(lambda: detector.detect(images, channel_order='rgb')),
                     lambda run=run_backbone, x=example: _milliseconds(lambda: run(x))]
            names += [(name, 'total'), (name, 'backbone')]
        timed = alternating_part_latencies(runs, args.warmup, args.repeats, f'ONNX Runtime batch {batch}')
    latencies: dict[str, dict[str, float]] = {}
    for (name, part), latency in zip(names, timed):
        latencies.setdefault(name, {})[part] = latency['total']
    return latencies, counts


def _milliseconds(run: Callable[[], object]) -> dict[str, float]:
    start = time.perf_counter()
    run()
    return {'total': (time.perf_counter() - start) * 1e3}


def run_task(task: Task, args: argparse.Namespace) -> list[dict[str, object]]:
    wanted = [spec for spec in task.models if args.rows is None or spec.name in args.rows]
    references = {spec.reference for spec in wanted if spec.reference}
    specs = [spec for spec in task.models if spec in wanted or spec.name in references]
    if not specs:
        return []
    size = tuple(args.size) if args.size else task.size
    models: dict[str, nn.Module] = {}
    for spec in tqdm(specs, desc=f'{task.name}: building', unit='model', leave=False):
        models[spec.name] = build_model(spec, models.get(spec.reference), args.detections)
        models[spec.name].to(args.device)
    scope = next(iter(models.values())).data_preprocessor.__module__.split('.')[0]

    rows = []
    for batch in args.batches:
        images = photographs(size, batch)
        data = packed_batch(scope, images)
        macs = {name: macs_per_part(model, data) for name, model in models.items()} if batch == 1 else None
        if 'torch' in args.runtimes:
            latencies, counts = torch_latencies(models, data, args, f'{task.name} batch {batch}')
            rows += [table_row(task, spec, batch, size, 'torch', latencies, macs, counts[spec.name])
                     for spec in specs]
        if 'ort' in args.runtimes and task.name == 'mask-rcnn' and batch in args.ort_batches:
            latencies, counts = onnx_runtime_latencies(models, {spec.name: spec for spec in specs}, size, batch,
                                                       images, args)
            rows += [table_row(task, spec, batch, size, 'ONNX Runtime', latencies, macs, counts[spec.name])
                     for spec in specs if spec.name in latencies and spec.reference in (None, *latencies)]
    if 'graph' in args.runtimes:
        graphed = graph_models(models)
        for batch in args.batches:
            data = packed_batch(scope, photographs(size, batch))
            latencies, counts = torch_latencies(graphed, data, args, f'{task.name} batch {batch}, CUDA graph')
            rows += [table_row(task, spec, batch, size, 'torch, backbone as CUDA graph', latencies, None,
                               counts[spec.name]) for spec in specs if spec.name in graphed
                     and (spec.reference is None or spec.reference in graphed)]
    return rows


def table_row(task: Task, spec: WholeModel, batch: int, size: tuple[int, int], runtime: str, latencies: dict,
              macs: dict | None, count: str) -> dict[str, object]:
    mine = latencies[spec.name]
    row = {'task': task.name, 'model': spec.name, 'runtime': runtime, 'batch': batch, 'input': f'{size[0]}x{size[1]}',
           'detections': count or None}
    for part in PARTS:
        row[f'{part} ms'] = mine.get(part)
    row[f'{DENSE_HEAD} ms'] = mine.get(DENSE_HEAD)
    row['whole ms'] = mine['total']
    if macs is not None:
        row['backbone GMACs'] = macs[spec.name]['backbone']
        row['neck+heads GMACs'] = macs[spec.name]['neck'] + macs[spec.name]['heads']
        row['whole GMACs'] = macs[spec.name]['total']
    if spec.reference is not None:
        dense = latencies[spec.reference]
        backbone_share = dense['backbone'] / dense['total']
        row['backbone share of dense'] = backbone_share
        row['backbone speedup'] = dense['backbone'] / mine['backbone']
        row['whole speedup'] = dense['total'] / mine['total']
        row['Amdahl bound'] = amdahl_bound(backbone_share, row['backbone speedup'])
        row['eff_whole'] = row['whole speedup'] / row['Amdahl bound']
        if macs is not None and all(part in dense for part in PARTS):
            row['MACs bound'] = macs_bound(dense, macs[spec.reference], macs[spec.name])
            row['eff_macs'] = row['whole speedup'] / row['MACs bound']
        if macs is not None:
            row['whole MACs ratio'] = macs[spec.reference]['total'] / macs[spec.name]['total']
        row['same weights'] = 'yes' if spec.same_weights else 'no (other network)'
    return row


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.device.type != 'cpu' and args.device.type != 'cuda':
        raise ValueError(f'the whole suite runs on the CPU or a CUDA GPU, got --device {args.device}')
    if 'graph' in args.runtimes and args.device.type != 'cuda':
        raise ValueError('--runtimes graph replays the backbone from a CUDA graph: it needs --device cuda')
    if 'ort' in args.runtimes and args.device.type != 'cpu':
        raise ValueError('--runtimes ort compares ONNX Runtime\'s CPU build with PyTorch on the CPU: run it with '
                         '--device cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmengine.logging import MMLogger
    # The newest logger is mmengine's current one: building the models then logs warnings only.
    MMLogger.get_instance('whole-model-benchmark', log_level='WARNING')
    if 'fcos3d' in args.tasks or 'pgd' in args.tasks:
        try:
            import mmdet3d  # noqa: F401
        except ImportError as error:
            raise ValueError(f'--tasks fcos3d/pgd need mmdet3d, which cannot be imported: {error}') from None
    known = {spec.name for task in args.tasks for spec in TASKS[task].models}
    unknown = sorted(set(args.rows or ()) - known)
    if unknown:
        raise ValueError(f'--rows {unknown} are not rows of the tasks {args.tasks}; their rows: {sorted(known)}')
    return [row for task in args.tasks for row in run_task(TASKS[task], args)]
