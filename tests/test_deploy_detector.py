"""Whole Mask R-CNN in ONNX Runtime (tools/export.py --whole-model, plugin.deploy.OnnxDetector): its detections
equal mmdet's ``predict`` on photographs and demo images, with standard ONNX operators only, and bad inputs get
one-line errors.

Two tiny detectors from the project's configs: SparseViT-Swin with cfg2-like ratios (every pruned stage keeps a
subset of its windows) whose RPN head skips every other 2x2 tile of anchors (their logits are -inf, as a sparse
head's: they must never become proposals), test resize to 128x128 without keeping the ratio; and an
EfficientFormer-L1-style detector whose test resize keeps the ratio (at most 192x128). Their weights are mmdet's
initialisation with the output layers of the heads scaled so that detections exist and their scores, boxes and
masks are spread (a near tie would be ranked by float error). Each is exported once per module by the tool.
"""
import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmdet.evaluation import CocoMetric
from mmdet.models.dense_heads import RPNHead
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData
from random_weights import randomize
from skimage import data as photographs

from plugin.demo_data import make_demo_data
from plugin.demo_data.synthetic import SHAPE_CLASSES, SHAPE_PALETTE
from plugin.deploy import (
    OUTPUT_NAMES,
    Detections,
    MaskRCNNDetections,
    OnnxDetector,
    compare_detections,
    example_inputs,
    mmdet_predict,
    paste_masks,
    with_exact_resize,
)
from plugin.deploy.runner import detection_test_pipeline
from plugin.search.evaluation import build_model
from plugin.utils.cli import run_tool

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
CFG2_LIKE_RATIOS = [[0.6, 0.6], [0., 0.], [0.4, 0.5], [0., 0.]]
SPARSEVIT_OVERRIDES = f'''
model = dict(
    backbone=dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.,
                  convert_weights=False, init_cfg=None, pruning_ratios={CFG2_LIKE_RATIOS}),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=16),
    rpn_head=dict(type='TileSkippingRPNHead', in_channels=16, feat_channels=16),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=1000)))
resize = dict(type='Resize', scale=(128, 128), keep_ratio=False)
'''
EFFICIENTFORMER_OVERRIDES = '''
model = dict(
    backbone=dict(arch=None, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 2), num_vit=1, layer_scale_init_value=1.),
    neck=dict(in_channels=[8, 16, 24, 32], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16))
resize = dict(type='Resize', scale=(192, 128), keep_ratio=True)
'''
# Tiny RoI heads, the demo's classes and a test pipeline with the resize above, for both.
SHARED_OVERRIDES = f'''
model.update(roi_head=dict(
    bbox_roi_extractor=dict(out_channels=16), mask_roi_extractor=dict(out_channels=16),
    bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes={len(SHAPE_CLASSES)}),
    mask_head=dict(in_channels=16, conv_out_channels=16, num_classes={len(SHAPE_CLASSES)})))
test_dataloader = dict(batch_size=1, dataset=dict(
    metainfo=dict(classes={SHAPE_CLASSES!r}, palette={SHAPE_PALETTE!r}),
    pipeline=[dict(type='LoadImageFromFile'), resize, dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
              dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))
'''
DETECTORS = {
    'sparsevit-cfg2': ('configs/sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg2.py',
                       SPARSEVIT_OVERRIDES, (128, 128)),
    'efficientformer-l1': ('configs/efficientformer/mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
                           EFFICIENTFORMER_OVERRIDES, (128, 192)),
}
# Output layers of the heads and the spread (std) of their outputs on a calibration image.
OUTPUT_SPREADS = {'rpn_head.rpn_cls': 2.0, 'rpn_head.rpn_reg': 0.1, 'roi_head.bbox_head.fc_cls': 2.5,
                  'roi_head.bbox_head.fc_reg': 0.3, 'roi_head.mask_head.conv_logits': 4.0}


@MODELS.register_module(force=True)
class TileSkippingRPNHead(RPNHead):
    """mmdet's RPNHead that computes only every other 2x2 tile of each level's anchors: the others get logit -inf,
    as a sparse head's skipped anchors, and mmdet's post-processing drops them before NMS (sigmoid(-inf) = 0, which
    no computed anchor reaches in these tests)."""

    def forward_single(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_score, bbox_pred = super().forward_single(x)
        rows = torch.arange(cls_score.shape[-2], device=x.device) // 2
        cols = torch.arange(cls_score.shape[-1], device=x.device) // 2
        return cls_score.masked_fill((rows[:, None] + cols[None]) % 2 == 1, float('-inf')), bbox_pred

    def _bbox_post_process(self, results: InstanceData, cfg, rescale: bool = False, with_nms: bool = True,
                           img_meta: dict | None = None) -> InstanceData:
        return super()._bbox_post_process(results[results.scores > 0], cfg, rescale, with_nms, img_meta)


def tool(name: str):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_config(directory: Path, base: str, overrides: str) -> Path:
    path = directory / 'detector.py'
    path.write_text(f'_base_ = {str(REPO / base)!r}\n{overrides}\n{SHARED_OVERRIDES}\n')
    return path


def photograph(name: str) -> np.ndarray:
    """A scikit-image sample photograph as HxWx3 uint8 RGB at its own size."""
    image = getattr(photographs, name)()
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def spread_head_outputs(model: nn.Module, image: torch.Tensor) -> None:
    """Scale each layer of ``OUTPUT_SPREADS`` so that its outputs on ``image`` have that std (mmdet initialises
    them with std 0.001..0.01: scores would all but tie and boxes equal their anchors)."""
    layers = {name: model.get_submodule(name) for name in OUTPUT_SPREADS}
    outputs = {name: [] for name in layers}
    hooks = [layer.register_forward_hook(lambda module, args, out, name=name: outputs[name].append(out))
             for name, layer in layers.items()]
    with torch.no_grad():
        MaskRCNNDetections(model)(image, torch.tensor([image.shape[2:]], dtype=torch.float32))
        for hook in hooks:
            hook.remove()
        for name, layer in layers.items():
            values = torch.cat([out.flatten() for out in outputs[name]])
            layer.weight.mul_(OUTPUT_SPREADS[name] / values[values.isfinite()].std())


class Exported(NamedTuple):
    config: Path
    cfg: Config
    model: nn.Module
    path: Path
    runner: OnnxDetector
    tool_rows: list[dict]


@pytest.fixture(scope='module')
def exported(tmp_path_factory, one_thread):
    """``exported(name)``: the tiny detector with test weights, exported by tools/export.py (once per module)."""
    cache = {}

    def export(name: str) -> Exported:
        if name not in cache:
            base, overrides, size = DETECTORS[name]
            directory = tmp_path_factory.mktemp(name)
            config = write_config(directory, base, overrides)
            cfg = Config.fromfile(str(config))
            torch.manual_seed(0)
            model = build_model(copy.deepcopy(cfg), None, 'cpu')
            model.init_weights()
            randomize(model)
            calibration = torch.from_numpy(cv2.resize(photograph('astronaut'), size[::-1]).astype(np.float32))
            spread_head_outputs(model, ((calibration - 110) / 60).permute(2, 0, 1)[None].contiguous())
            checkpoint = directory / 'weights.pth'
            torch.save({'state_dict': model.state_dict()}, checkpoint)
            out = directory / 'detector.onnx'
            rows = tool('export').main([str(config), str(checkpoint), '--whole-model', '--shape', *map(str, size),
                                        '--out', str(out)])
            cache[name] = Exported(config, cfg, model, out, OnnxDetector(out, threads=1), rows)
        return cache[name]
    return export


def mmdet_pipeline(exported: Exported, image_bgr: np.ndarray) -> tuple[torch.Tensor, DetDataSample]:
    """The image through mmdet's own test pipeline (from an array) and data preprocessor, then zero-padded to the
    file's input size (mmdet pads to a multiple of 32; the file's input is fixed)."""
    pipeline = [transform for transform in copy.deepcopy(detection_test_pipeline(exported.cfg))
                if transform['type'] != 'LoadAnnotations']
    pipeline[0] = dict(type='mmdet.LoadImageFromNDArray')
    packed = Compose(pipeline)(dict(img=image_bgr, img_id=0))
    batch = exported.model.data_preprocessor(pseudo_collate([packed]), False)
    height, width = exported.runner.input_size
    inputs = F.pad(batch['inputs'], (0, width - batch['inputs'].shape[3], 0, height - batch['inputs'].shape[2]))
    sample = batch['data_samples'][0]
    sample.set_metainfo({'batch_input_shape': (height, width), 'pad_shape': (height, width)})
    return inputs, sample


def assert_runner_equals_mmdet(exported: Exported, image: np.ndarray | Path, rgb: bool = False) -> int:
    """The runner's input equals mmdet's preprocessing bit for bit, and its detections equal mmdet's predict;
    returns the number of detections."""
    image_bgr = cv2.imread(str(image)) if isinstance(image, Path) else image[..., ::-1] if rgb else image
    inputs, sample = mmdet_pipeline(exported, np.ascontiguousarray(image_bgr))
    prepared = exported.runner.prepare(image if isinstance(image, Path) else image, 'rgb' if rgb else 'bgr')
    assert np.array_equal(prepared.input, inputs[0].numpy())
    assert (prepared.img_shape, prepared.scale_factor, prepared.ori_shape) == (
        sample.img_shape, sample.scale_factor, sample.ori_shape)
    with torch.no_grad():
        reference = exported.model.predict(inputs, [sample])[0].pred_instances
    detections = exported.runner.run_prepared([prepared])[0]
    parity = compare_detections(detections, reference)
    assert parity.holds, parity
    return parity.count


@pytest.mark.parametrize('name', DETECTORS)
def test_export_tool_writes_a_standard_onnx_graph_with_nms_and_roialign(exported, name):
    model = onnx.load(str(exported(name).path))
    ops = {(node.domain or 'ai.onnx', node.op_type) for node in model.graph.node}
    assert {domain for domain, _ in ops} == {'ai.onnx'} and not model.functions
    assert {('ai.onnx', 'NonMaxSuppression'), ('ai.onnx', 'RoiAlign'), ('ai.onnx', 'TopK')} <= ops
    assert [output.name for output in model.graph.output] == list(OUTPUT_NAMES)


@pytest.mark.parametrize('name', DETECTORS)
def test_export_tool_checks_the_file_against_mmdet_predict(exported, name):
    rows = exported(name).tool_rows
    assert len(rows) == 2 and all(row['matched'] == row['detections (PyTorch)'] == row['detections (ONNX)'] > 0
                                  for row in rows)


@pytest.mark.parametrize('photo', PHOTOS)
@pytest.mark.parametrize('name', DETECTORS)
def test_onnx_runtime_detections_equal_mmdet_predict_on_photographs(exported, name, photo):
    assert assert_runner_equals_mmdet(exported(name), photograph(photo), rgb=True) > 0


@pytest.fixture(scope='module')
def demo_coco(tmp_path_factory) -> Path:
    """The demo's COCO-format shapes (3 validation images of 144x176)."""
    return make_demo_data(tmp_path_factory.mktemp('demo'), num_train=1, num_val=3, image_size=(144, 176),
                          tasks=('coco',))['coco']


@pytest.mark.parametrize('name', DETECTORS)
def test_onnx_runtime_detections_equal_mmdet_predict_on_demo_images(exported, demo_coco, name):
    paths = sorted((demo_coco / 'val').glob('*.jpg'))
    assert sum(assert_runner_equals_mmdet(exported(name), path) for path in paths) > 0


def test_skipped_anchors_never_become_proposals(exported):
    """The tile-skipping head's -inf anchors: the module's proposals equal mmdet's (which drops them before NMS),
    and a head that skips every anchor gives no proposal and no detection."""
    detector = exported('sparsevit-cfg2')
    model, module = detector.model, MaskRCNNDetections(detector.model)
    images, shapes = example_inputs([detector.runner.prepare(photograph('coffee'), 'rgb')])
    sample = DetDataSample(metainfo={'img_shape': tuple(int(side) for side in shapes[0]), 'scale_factor': (1., 1.)})
    bias = model.rpn_head.rpn_cls.bias.clone()
    with torch.no_grad():
        features = model.extract_feat(images)
        cls_scores, bbox_preds = model.rpn_head(features)
        priors = model.rpn_head.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores], device='cpu')
        proposals, valid = module.proposals([score[0] for score in cls_scores], [pred[0] for pred in bbox_preds],
                                            priors, shapes[0])
        reference = model.rpn_head.predict(features, [sample], rescale=False)[0]
        try:
            model.rpn_head.rpn_cls.bias.fill_(float('-inf'))
            outputs = module(images, shapes)
        finally:
            model.rpn_head.rpn_cls.bias.copy_(bias)
    assert sum(int(score.isinf().sum()) for score in cls_scores) > 0
    assert 0 < int(valid.sum()) == len(reference) and torch.equal(proposals[valid], reference.bboxes)
    assert int(outputs[-1][0]) == 0 and not outputs[1].any()


def test_eager_module_equals_mmdet_predict_on_a_batch_of_two(exported):
    """The exportable module at batch 2 (two differently resized images in one padded batch) in PyTorch: the same
    detections as mmdet's predict on that batch, bit for bit."""
    detector = exported('efficientformer-l1')
    prepared = [detector.runner.prepare(photograph(name), 'rgb') for name in ('astronaut', 'rocket')]
    assert prepared[0].img_shape != prepared[1].img_shape
    with torch.no_grad():
        boxes, scores, labels, _, counts = MaskRCNNDetections(detector.model)(*example_inputs(prepared))
    references = mmdet_predict(detector.model, prepared)
    for image, reference in enumerate(references):
        count = int(counts[image])
        assert count == len(reference.pred_instances) > 0
        scale = boxes.new_tensor(prepared[image].scale_factor).repeat(2)
        assert torch.equal(boxes[image, :count] / scale, reference.pred_instances.bboxes)
        assert torch.equal(scores[image, :count], reference.pred_instances.scores)
        assert torch.equal(labels[image, :count], reference.pred_instances.labels)


@pytest.mark.parametrize('spread', [0.5, 1e-6], ids=['uniform', 'at-the-threshold'])
def test_pasted_masks_equal_mmdet_paste_bit_for_bit(spread):
    """paste_masks (numpy) against mmdet's _do_paste_mask on the CPU, box by box: boxes inside, across the border,
    thin, of zero width and the whole image (mmdet's boxes lie in the image: it cannot paste one outside).
    Probabilities within ``spread`` of the threshold 0.5; at 1e-6 most pixels are decided by the float32 path."""
    generator = torch.Generator().manual_seed(0)
    probabilities = 0.5 + spread * (2 * torch.rand(7, 28, 28, generator=generator) - 1)
    boxes = torch.tensor([[10.3, 5.7, 60.2, 44.9], [-8.5, 30.1, 25.4, 71.0], [70.2, 60.3, 95.0, 90.5],
                          [33.0, 20.0, 33.0, 50.0], [40.1, 10.2, 41.3, 12.0], [0.0, 0.0, 90.0, 75.0],
                          [85.5, 2.0, 90.0, 74.6]])
    height, width = 75, 90
    expected = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for index in range(len(boxes)):
        pasted, region = _do_paste_mask(probabilities[index:index + 1, None], boxes[index:index + 1], height, width,
                                        skip_empty=True)
        expected[(slice(index, index + 1), ) + region] = pasted >= 0.5
    masks = paste_masks(probabilities.numpy(), boxes.numpy(), height, width, 0.5)
    assert masks.any() and not masks.all() and np.array_equal(masks, expected.numpy())


def test_runner_needs_no_torch_mmcv_mmdet_or_mmengine(exported, demo_coco, tmp_path):
    """runner.py loaded by path in a process where importing torch, torchvision, mmcv, mmdet, mmengine or plugin
    fails: the same detections as in this process."""
    detector = exported('efficientformer-l1')
    image = sorted((demo_coco / 'val').glob('*.jpg'))[0]
    script = tmp_path / 'run_without_torch.py'
    script.write_text(NO_TORCH_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(REPO / 'plugin' / 'deploy' / 'runner.py'),
                             str(detector.path), str(image)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outside = json.loads(result.stdout.strip().splitlines()[-1])
    inside = detector.runner.detect(image)[0]
    assert outside['blocked'] and len(inside.scores) > 0
    assert outside['scores'] == inside.scores.tolist() and outside['bboxes'] == inside.bboxes.tolist()
    assert outside['labels'] == inside.labels.tolist() and outside['mask_pixels'] == inside.masks.sum((1, 2)).tolist()


NO_TORCH_SCRIPT = """
import importlib.abc, importlib.util, json, sys
BLOCKED = {'torch', 'torchvision', 'mmcv', 'mmdet', 'mmengine', 'plugin'}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked')
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location('runner', sys.argv[1])
runner = importlib.util.module_from_spec(spec)
sys.modules['runner'] = runner
spec.loader.exec_module(runner)
detections = runner.OnnxDetector(sys.argv[2], threads=1).detect(sys.argv[3])[0]
print(json.dumps({'blocked': not any(name.split('.')[0] in BLOCKED for name in sys.modules),
                  'bboxes': detections.bboxes.tolist(), 'scores': detections.scores.tolist(),
                  'labels': detections.labels.tolist(), 'mask_pixels': detections.masks.sum((1, 2)).tolist()}))
"""


def test_runner_samples_feed_coco_metric_and_the_visualizer_unchanged(exported, demo_coco, tmp_path, capsys):
    """The runner's DetDataSamples: mmdet's CocoMetric scores them exactly as mmdet's own predictions of the same
    images, and tools/infer_onnx.py draws them with DetLocalVisualizer at each image's size."""
    detector = exported('efficientformer-l1')
    ann_file = demo_coco / 'annotations' / 'instances_val.json'
    image_ids = {image['file_name']: image['id'] for image in json.loads(ann_file.read_text())['images']}
    paths = sorted((demo_coco / 'val').glob('*.jpg'))
    ours = detector.runner.predict(paths, metainfo=[{'img_id': image_ids[path.name]} for path in paths])
    theirs = []
    for path in paths:
        inputs, sample = mmdet_pipeline(detector, cv2.imread(str(path)))
        sample.set_metainfo({'img_id': image_ids[path.name]})
        with torch.no_grad():
            theirs.append(detector.model.predict(inputs, [sample])[0])
    scores = []
    for samples in (ours, theirs):
        metric = CocoMetric(ann_file=str(ann_file), metric=['bbox', 'segm'])
        metric.dataset_meta = {'classes': SHAPE_CLASSES}
        metric.process({}, [sample.to_dict() for sample in samples])
        scores.append(metric.evaluate(len(samples)))
    assert scores[0] == scores[1] and 'coco/segm_mAP' in scores[0]

    threshold = f'{np.median(np.concatenate([sample.pred_instances.scores.numpy() for sample in ours])):.3f}'
    rows = tool('infer_onnx').main([str(detector.path), str(demo_coco / 'val'), '--out', str(tmp_path / 'pictures'),
                                    '--config', str(detector.config), '--score-thr', threshold])
    drawn = [row[f'drawn (score >= {float(threshold):g})'] for row in rows]
    assert [row['image'] for row in rows] == [path.name for path in paths]
    assert 0 < sum(drawn) < sum(row['detections'] for row in rows)
    for path, count in zip(paths, drawn):
        picture, image = cv2.imread(str(tmp_path / 'pictures' / path.name)), cv2.imread(str(path))
        assert picture.shape == image.shape
        assert not np.array_equal(picture, image) or count == 0
    assert 'detecting' in capsys.readouterr().err  # tqdm's bar


def test_near_ties_are_told_apart_from_differences():
    """compare_detections: two detections whose scores tie within 1e-3 at the cut of the maximum number of
    detections, one kept on each side, are near ties; a moved box or a missing confident detection is a
    difference."""
    boxes = torch.tensor([[0., 0., 10., 10.], [20., 20., 40., 40.], [50., 5., 70., 30.]])
    reference = InstanceData(bboxes=boxes, scores=torch.tensor([0.9, 0.5004, 0.5]), labels=torch.tensor([0, 1, 2]),
                             masks=torch.zeros(3, 80, 80, dtype=torch.bool))

    def detections(keep: list[int], shift: float = 0.) -> Detections:
        chosen = reference[keep]
        return Detections(chosen.bboxes.numpy() + shift, chosen.scores.numpy(), chosen.labels.numpy(),
                          chosen.masks.numpy(), (80, 80), (80, 80), (1., 1.))

    exact = compare_detections(detections([0, 1, 2]), reference)
    swapped = compare_detections(detections([0, 2]), reference[[0, 1]], max_detections=2)
    moved = compare_detections(detections([0, 1, 2], shift=0.5), reference)
    missing = compare_detections(detections([1, 2]), reference)
    assert exact.holds and exact.min_box_iou == 1
    assert not swapped.holds and swapped.holds_up_to_ties and swapped.near_ties == 2
    assert not moved.holds and not moved.holds_up_to_ties
    assert not missing.holds and not missing.holds_up_to_ties


def write_variant(tmp_path: Path, base: Path, overrides: str) -> str:
    path = tmp_path / f'variant_{abs(hash(overrides))}.py'
    path.write_text(f'_base_ = {str(base)!r}\n{overrides}\n')
    return str(path)


def test_runner_reports_wrong_inputs_in_one_line(exported, tmp_path):
    detector = exported('efficientformer-l1')
    runner = detector.runner
    cases = [
        (TypeError, 'an image is an HxWx3 uint8 array (BGR) or a path to an image file, got list',
         lambda: runner.detect([[0, 0, 0]])),
        (TypeError, 'an image array must hold uint8 pixels, got float32',
         lambda: runner.detect(np.zeros((32, 32, 3), np.float32))),
        (ValueError, 'an image array must be HxWx3 with 3 colour channels, got shape (32, 40) (1 channel',
         lambda: runner.detect(np.zeros((32, 40), np.uint8))),
        (ValueError, 'got shape (32, 40, 4) (4 channels: convert it to 3 first',
         lambda: runner.detect(np.zeros((32, 40, 4), np.uint8))),
        (FileNotFoundError, 'no image file', lambda: runner.detect(tmp_path / 'missing.jpg')),
        (ValueError, 'a 300x100 image resizes to 192x64', lambda: runner.detect(np.zeros((300, 100, 3), np.uint8))),
        (ValueError, "channel_order must be one of ('bgr', 'rgb')",
         lambda: runner.detect(np.zeros((32, 32, 3), np.uint8), channel_order='RGB')),
        (ValueError, 'detector.onnx was exported at 128x192, not 128x128: export one file per input size',
         lambda: OnnxDetector(detector.path, input_size=(128, 128))),
        (ValueError, 'detector.onnx was exported from another model config (detector.py, fingerprint',
         lambda: OnnxDetector(detector.path, config=exported('sparsevit-cfg2').config)),
        (ValueError, "detector.onnx resizes images as {'scale': [192, 128]",
         lambda: OnnxDetector(detector.path, config=write_variant(
             tmp_path, detector.config, "test_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'),"
             " dict(type='Resize', scale=(192, 128), keep_ratio=False), dict(type='PackDetInputs')]))"))),
    ]
    for error, message, call in cases:
        with pytest.raises(error) as raised:
            call()
        assert message in str(raised.value) and '\n' not in str(raised.value), (message, str(raised.value))
    backbone_only = tmp_path / 'backbone.onnx'
    tool('export').main([str(detector.config), '--shape', '64', '64', '--out', str(backbone_only)])
    with pytest.raises(ValueError, match='is no whole detector exported by tools/export.py --whole-model'):
        OnnxDetector(backbone_only)


TINY_R50 = 'model = dict(backbone=dict(depth=18, init_cfg=None), neck=dict(in_channels=[64, 128, 256, 512]))'


@pytest.mark.parametrize('base, overrides, options, message', [
    ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', TINY_R50, [],
     'CascadeRCNN has no exportable whole form: its roi_head is CascadeRoIHead; the whole-detector export reproduces '
     'Mask R-CNN'),
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', TINY_R50, [],
     'RetinaNet has no exportable whole form: its bbox_head is RetinaHead (a single-stage detector)'),
    ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', TINY_R50, [],
     'FasterRCNN has no exportable whole form: its roi_head mask head is missing (a Faster R-CNN)'),
    ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', TINY_R50, [],
     "the model's backbone is ResNet; exporting supports this project's backbones"),
    (None, '', ['--format', 'torch-export'], '--whole-model exports a detector to ONNX only'),
    (None, '', ['--dynamic'], 'a whole detector exports at a static size'),
    (None, '', ['--shape', '100', '128'], "the input size 100x128 must be a multiple of the data preprocessor's "
                                          'pad_size_divisor 32'),
])
def test_export_tool_reports_detectors_it_cannot_export_in_one_line(exported, base, overrides, options, message,
                                                                    tmp_path, capsys, one_thread):
    config = (str(exported('efficientformer-l1').config) if base is None
              else write_variant(tmp_path, Path(base) if '::' not in base else base, overrides))
    suffix = '.pt2' if 'torch-export' in options else '.onnx'
    argv = [config, '--whole-model', '--shape', '128', '192', *options, '--out', str(tmp_path / f'model{suffix}')]
    assert run_tool(tool('export').main, argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r'\S+: error: ', last_line) and message in last_line, last_line


def test_with_exact_resize_makes_every_test_resize_exact_and_leaves_the_config_alone():
    cfg = Config(dict(
        test_pipeline=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(1333, 800), keep_ratio=True)],
        test_dataloader=dict(dataset=dict(pipeline=[dict(type='mmdet.Resize', scale_factor=0.5, keep_ratio=True)]))))
    resized = with_exact_resize(cfg, (672, 480))
    assert resized.test_pipeline[1] == dict(type='Resize', scale=(480, 672), keep_ratio=False)
    assert resized.test_dataloader.dataset.pipeline[0] == dict(type='mmdet.Resize', scale=(480, 672), keep_ratio=False)
    assert cfg.test_pipeline[1] == dict(type='Resize', scale=(1333, 800), keep_ratio=True)
