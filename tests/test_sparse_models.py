"""Sparse all the way in whole models: SparseMaskRCNN and SparseEncoderDecoder against mmdet's and mmseg's
models, the configs, training through the runner with sparsity-aware adaptation, and export."""
import copy
import math
import re
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn as nn
from kept_tiles import every_tile
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner
from random_weights import randomize
from tiny_configs import IMAGE_SIZE, TINY_BACKBONE, TRAIN_ITERS, tiny_detection_cfg, tiny_segmentation_cfg

import plugin  # noqa: F401  (registers the project's modules)
from plugin.demo_data.synthetic import write_coco
from plugin.deploy import load_runner, save, trace
from plugin.models.detectors import sparse_encoder_decoder, sparse_mask_rcnn  # noqa: F401  (registration)
from plugin.models.utils.records import ForwardRecord, RecordingScope
from plugin.models.utils.tile_conv import SparseFeatures, computed_as

CONFIG_ROOT = Path(__file__).resolve().parents[1] / 'configs'
# The demo's own sparse configs are tested with the demo.
SPARSE_CONFIGS = sorted(p for p in CONFIG_ROOT.rglob('*sparse-neck*.py') if 'demo' not in p.parts)
# 75x110: stage maps 19x28 (5x7 windows of 4), 10x14, 5x7 (2x2 windows), 3x4; stages 0 and 2 pruned as cfg2 prunes.
IMAGE = (75, 110)
RATIOS = [[0.5, 0.5], [0., 0.], [0.5, 0.5], [0., 0.]]
# Stage 0 keeps 17 of 35 windows (the tiles), stage 1 11 of 12 (0.92: the dense fallback).
EXPORT_RATIOS = [[0.5, 0.5], [0.05, 0.05], [0., 0.], [0., 0.]]

pytestmark = pytest.mark.usefixtures('one_thread')


def as_sparse(model_cfg: Config, detector: str) -> Config:
    """A tiny model config switched to sparse all the way (as configs/sparsevit/*sparse-neck*.py switch it)."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.type = detector
    model_cfg.neck.type = 'SparseFPN'
    if 'rpn_head' in model_cfg:
        model_cfg.rpn_head.type = 'SparseRPNHead'
    return model_cfg


def tiny_model_cfg(task: str) -> Config:
    make = tiny_detection_cfg if task == 'detection' else tiny_segmentation_cfg
    cfg = make(Path('unused'), Path('unused'))
    if task == 'segmentation':
        cfg.model.data_preprocessor.size = IMAGE
    return cfg.model


def build_pair(task: str) -> tuple[nn.Module, nn.Module]:
    """The library's model and the sparse one at the same random weights, dense backbone, eval mode."""
    scope = 'mmdet' if task == 'detection' else 'mmseg'
    init_default_scope(scope)
    model_cfg = tiny_model_cfg(task)
    torch.manual_seed(0)
    reference = MODELS.build(model_cfg)
    reference.init_weights()
    randomize(reference)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.startswith(('neck.', 'rpn_head.')) and name.endswith('bias'):
                param.normal_(0, 0.5)
    sparse = MODELS.build(as_sparse(model_cfg, 'SparseMaskRCNN' if task == 'detection' else 'SparseEncoderDecoder'))
    sparse.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), sparse.eval()


def every_tile_of(record: ForwardRecord, stages) -> tuple:
    """Every window of each stage, as kept tiles (the tile path computing what the dense path computes)."""
    return tuple(every_tile(1, stage.hw_shape, stage.window_size)
                 for stage in (record.stages[i] for i in stages))


def detection_batch() -> dict:
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=1, image_shapes=(3, *IMAGE), num_items=[3], num_classes=3, with_mask=True)


def segmentation_batch() -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *IMAGE), dtype=torch.uint8, generator=generator)
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, *IMAGE), generator=generator)),
                           metainfo=dict(img_shape=IMAGE, ori_shape=IMAGE, pad_shape=IMAGE))
    return dict(inputs=[image], data_samples=[sample])


def assert_same_detections(results, expected):
    for result, reference in zip(results, expected):
        ours, theirs = result.pred_instances, reference.pred_instances
        assert len(theirs) > 0 and len(ours) == len(theirs)
        torch.testing.assert_close(ours.bboxes, theirs.bboxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ours.scores, theirs.scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(ours.labels, theirs.labels)
        assert (ours.masks != theirs.masks).float().mean() < 1e-3  # a mask pixel at exactly 0.5 may flip


@pytest.fixture(scope='module')
def detectors():
    return build_pair('detection')


def test_sparse_mask_rcnn_is_mmdet_mask_rcnn_without_pruning_and_on_every_tile(detectors):
    """Dense backbone: mmdet's path (every kept-tiles entry None); every window passed as kept: the tile path,
    with the same detections (RoIAlign reads the FPN maps the tiles were written into)."""
    reference, sparse = detectors
    batch = detection_batch()
    with torch.no_grad():
        expected = reference.test_step(batch)
        inputs = sparse.data_preprocessor(batch)['inputs']
        features = sparse.extract_feat(inputs)
        assert isinstance(features, SparseFeatures) and features.kept_tiles == (None, ) * 5
        assert_same_detections(sparse.test_step(batch), expected)
        with mock.patch.object(ForwardRecord, 'kept_tiles', every_tile_of), computed_as('tiles'):
            features = sparse.extract_feat(inputs)
            assert all(tiles is not None for tiles in features.kept_tiles[:4])
            assert_same_detections(sparse.test_step(batch), expected)


def test_sparse_mask_rcnn_with_pruning_passes_the_backbone_tiles_to_neck_and_rpn(detectors):
    _, sparse = detectors
    model = copy.deepcopy(sparse)
    model.backbone.set_pruning_ratios(RATIOS)
    batch = detection_batch()
    with torch.no_grad():
        inputs = model.data_preprocessor(batch)['inputs']
        _, record = model.backbone.forward_with_record(inputs)
        features = model.extract_feat(inputs)
        expected_tiles = record.kept_tiles(model.backbone.out_indices)
        assert [t is None for t in features.kept_tiles] == [False, True, False, True, True]
        for tiles, expected in zip(features.kept_tiles, expected_tiles):
            assert tiles is None or torch.equal(tiles.index, expected.index)
        cls_scores, _ = model.rpn_head(features)
        assert torch.equal(torch.isneginf(cls_scores[0]), ~expected_tiles[0].mask().unsqueeze(1).expand_as(
            cls_scores[0]))
        assert not torch.isneginf(cls_scores[1]).any()
        assert len(model.test_step(batch)[0].pred_instances) > 0


@pytest.mark.parametrize('scorer', ['l2', 'learned', 'learned, frozen'])
def test_sparse_mask_rcnn_trains_every_neck_and_head_parameter(detectors, scorer):
    """One training step with pruning: the neck and RPN run on tiles and every parameter of both gets a
    gradient. The learned scorer in training runs every window, so there they run densely, and its keep-ratio
    loss joins; frozen (freeze_scorer), it ranks as at inference, takes no gradient and adds no loss."""
    _, sparse = detectors
    init_default_scope('mmdet')
    model_cfg = as_sparse(tiny_model_cfg('detection'), 'SparseMaskRCNN')
    model_cfg.backbone.update(scorer=scorer.split(',')[0], freeze_scorer=scorer.endswith('frozen'),
                              pruning_ratios=RATIOS)
    model = MODELS.build(model_cfg)
    model.train()
    batch = detection_batch()
    data = model.data_preprocessor(batch, True)
    scope = RecordingScope()
    features = model.extract_feat(data['inputs'])
    record = scope.close()[0]
    recorded = record.kept_tiles(model.backbone.out_indices)[0]
    if scorer == 'learned':
        assert recorded is None and all(t is None for t in features.kept_tiles)
    else:
        assert torch.equal(features.kept_tiles[0].index, recorded.index) and recorded.kept_fraction < 1
    losses = model.loss(data['inputs'], data['data_samples'])
    assert ('loss_window_keep_ratio' in losses) == (scorer == 'learned')
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    untrained = [name for name, param in model.named_parameters()
                 if name.startswith(('neck.', 'rpn_head.')) and (param.grad is None or not param.grad.any())]
    assert not untrained
    scorer_grads = [param.grad for name, param in model.named_parameters() if '.window_scorer.' in name]
    assert bool(scorer_grads) == scorer.startswith('learned')
    assert all(grad is None for grad in scorer_grads) == (scorer != 'learned')


def test_freeze_scorer_needs_the_learned_scorer():
    init_default_scope('mmdet')
    backbone_cfg = tiny_model_cfg('detection').backbone
    backbone_cfg.update(scorer='l2', freeze_scorer=True)
    with pytest.raises(ValueError, match="freeze_scorer=True freezes the learned window scorer; scorer='l2'"):
        MODELS.build(backbone_cfg)


def test_sparse_semantic_fpn_is_mmseg_without_pruning_and_on_every_tile_and_prunes():
    reference, sparse = build_pair('segmentation')
    batch = segmentation_batch()
    with torch.no_grad():
        inputs = sparse.data_preprocessor(batch)['inputs']
        expected = reference(inputs, mode='tensor')
        torch.testing.assert_close(sparse(inputs, mode='tensor'), expected)
        with mock.patch.object(ForwardRecord, 'kept_tiles', every_tile_of), computed_as('tiles'):
            assert all(t is not None for t in sparse.extract_feat(inputs).kept_tiles)
            torch.testing.assert_close(sparse(inputs, mode='tensor'), expected, rtol=1e-4, atol=1e-5)
        sparse.backbone.set_pruning_ratios(RATIOS)
        features = sparse.extract_feat(inputs)
        assert [t is None for t in features.kept_tiles] == [False, True, False, True]
        assert sparse(inputs, mode='tensor').shape == expected.shape


def test_a_neck_without_kept_tiles_is_refused():
    init_default_scope('mmdet')
    model_cfg = as_sparse(tiny_model_cfg('detection'), 'SparseMaskRCNN')
    model_cfg.neck.type = 'FPN'
    with pytest.raises(TypeError, match='neck, which must take them'):
        MODELS.build(model_cfg)


# ------------------------------------------------------------------------------------------------ configs


def load_sparse_config(path: Path) -> Config:
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    return cfg


def test_every_sparse_config_switches_its_base_to_sparse_all_the_way():
    """Each sparse config is its base (today's cfg2 config) with the model, neck and head types switched."""
    assert {p.name for p in SPARSE_CONFIGS} == {
        'mask-rcnn_sparsevit-swin-t-p4-w7_sparse-neck_fpn_amp-ms-crop-3x_coco-672_cfg2.py',
        'mask-rcnn_sparsevit-swin-t-learned-scorer_sparse-neck_fpn_amp-ms-crop-3x_coco-672_cfg2.py',
        'fpn_sparsevit-swin-t-p4-w7_sparse-neck_4xb4-160k_ade20k-512x512_finetune_cfg2.py',
        'fcos3d_sparsevit-swin-t-p4-w7_sparse-neck_fpn_head-gn_8xb2-1x_nus-mono3d_cfg2.py'}
    for path in SPARSE_CONFIGS:
        cfg = load_sparse_config(path)
        base_name = re.search(r"^_base_ = '(.+)'$", path.read_text(), re.MULTILINE)[1]
        base = Config.fromfile(str(path.parent / base_name))
        assert base.model.backbone.pruning_ratios == cfg.model.backbone.pruning_ratios == 'cfg2', path.name
        assert cfg.model.type.startswith('Sparse') and cfg.model.neck.type == 'SparseFPN', path.name
        assert {k: v for k, v in cfg.model.neck.items() if k not in ('type', 'fill_skipped')} == {
            k: v for k, v in base.model.neck.items() if k != 'type'}, path.name
        for part in ('rpn_head', 'bbox_head'):
            if part in cfg.model:
                assert cfg.model[part].type == 'Sparse' + base.model[part].type, path.name
        # the learned scorer's config freezes the scorer, whose parameters then need no find_unused_parameters
        frozen = cfg.model.backbone.get('freeze_scorer', False)
        assert frozen == ('learned-scorer' in path.name), path.name
        assert cfg.get('find_unused_parameters') == (base.get('find_unused_parameters') and not frozen), path.name
        assert {k: v for k, v in cfg.model.backbone.items() if k != 'freeze_scorer'} == base.model.backbone
        for key in ('data_preprocessor', 'train_cfg', 'test_cfg', 'roi_head', 'decode_head'):
            assert cfg.model.get(key) == base.model.get(key), (path.name, key)


def narrow_to_tiny(cfg: Config) -> Config:
    """The config's model at the tiny backbone's widths (the structure, and so which parameters train, kept)."""
    model = cfg.model
    # Swin-T's depths, which the paper's cfg2 is written for.
    model.backbone.update(TINY_BACKBONE, depths=(2, 2, 6, 2), arch=None, convert_weights=False, init_cfg=None)
    out_indices = model.backbone.get('out_indices', (0, 1, 2, 3))
    model.neck.update(in_channels=[16 * 2**i for i in out_indices], out_channels=16)
    if 'rpn_head' in model:
        model.rpn_head.update(in_channels=16, feat_channels=16)
        for extractor in ('bbox_roi_extractor', 'mask_roi_extractor'):
            model.roi_head[extractor].out_channels = 16
        model.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32)
        model.roi_head.mask_head.update(in_channels=16, conv_out_channels=16)
    if 'decode_head' in model:
        model.decode_head.update(in_channels=[16] * 4, channels=16, norm_cfg=dict(type='BN', requires_grad=True))
        model.data_preprocessor.size = (96, 128)
    return cfg


@pytest.mark.parametrize('path', [p for p in SPARSE_CONFIGS if 'mono3d' not in p.parts], ids=lambda p: p.name)
def test_sparse_configs_need_find_unused_parameters_only_for_the_learned_scorer(path):
    """A training step of the config at the test batch's 96x128 (every pruned stage keeps windows) gives every
    parameter a gradient, but the learned scorer's of the stages cfg2 does not prune; find_unused_parameters
    is set exactly there (configs at COCO/ADE20K training sizes keep more windows still)."""
    cfg = narrow_to_tiny(load_sparse_config(path))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if 'rpn_head' in cfg.model:
        from mmdet.testing import demo_mm_inputs
        batch = demo_mm_inputs(batch_size=2, image_shapes=(3, 96, 128), num_items=[3, 2],
                               num_classes=cfg.model.roi_head.bbox_head.num_classes, with_mask=True)
    else:
        batch = segmentation_batch_at(96, 128, cfg.model.decode_head.num_classes)
    model.train()
    total, _ = model.parse_losses(model(**model.data_preprocessor(batch, True), mode='loss'))
    total.backward()
    untrained = {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}
    scorers = {name for name in untrained if '.window_scorer.' in name}
    assert untrained == scorers
    assert bool(scorers) == bool(cfg.get('find_unused_parameters'))


def segmentation_batch_at(height: int, width: int, num_classes: int) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        labels = torch.randint(0, num_classes, (1, height, width), generator=generator)
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=labels), metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width))))
    return dict(inputs=inputs, data_samples=samples)


# ------------------------------------------------------------------------------------- runner and export


class TilesRecorder(Hook):
    """The kept fraction of the stride-4 level in every training iteration."""

    def __init__(self):
        self.fractions, self.losses = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.scope = RecordingScope()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        record = self.scope.close()[-1]
        tiles = record.kept_tiles(runner.model.backbone.out_indices)[0]
        self.fractions.append(None if tiles is None else tiles.kept_fraction)
        self.losses.append(outputs['loss'].item())


@pytest.mark.slow
def test_sparse_mask_rcnn_adapts_through_the_runner(tmp_path):
    """Sparsity-aware adaptation of SparseMaskRCNN: every iteration a new ratio, the FPN and RPN on that
    iteration's tiles, finite losses, a validation and a checkpoint."""
    data_root = write_coco(tmp_path / 'data', seed=0, num_train=6, num_val=4, image_size=IMAGE_SIZE)
    cfg = tiny_detection_cfg(data_root, tmp_path / 'work')
    cfg.model = as_sparse(cfg.model, 'SparseMaskRCNN')
    runner = Runner.from_cfg(cfg)
    recorder = TilesRecorder()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    assert len(recorder.losses) == TRAIN_ITERS and all(math.isfinite(loss) for loss in recorder.losses)
    assert any(fraction is not None and fraction < 1 for fraction in recorder.fractions)
    assert (tmp_path / 'work' / f'iter_{TRAIN_ITERS}.pth').is_file()


class ProposalInputs(nn.Module):
    """What a whole-model exporter traces of a two-stage detector: its features and its RPN's outputs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.detector.extract_feat(image)
        cls_scores, bbox_preds = self.detector.rpn_head(features)
        return (*features, *cls_scores, *bbox_preds)


def assert_outputs_match(outputs, references, rtol):
    assert len(outputs) == len(references)
    for output, reference in zip(outputs, references):
        assert torch.equal(torch.isneginf(output), torch.isneginf(reference))
        finite = torch.isfinite(reference)
        scale = float(reference[finite].abs().max())
        assert float((output[finite] - reference[finite]).abs().max()) <= rtol * scale


def test_sparse_fpn_and_rpn_export_and_follow_their_input(detectors, tmp_path):
    """torch.export (non-strict) and ONNX (dynamo) of extract_feat + rpn_head at a static size compute what
    PyTorch computes, -inf logits of skipped anchors included, for inputs that keep other windows; one level
    runs on tiles, one through the dense fallback."""
    _, sparse = detectors
    model = ProposalInputs(copy.deepcopy(sparse)).eval()
    model.backbone.set_pruning_ratios(EXPORT_RATIOS)
    generator = torch.Generator().manual_seed(5)
    images = [torch.randn(1, 3, *IMAGE, generator=generator) for _ in range(2)]
    with torch.no_grad():
        references = [model(image) for image in images]  # an eager call first: the caches it fills stay out
    program = trace(model, images[0])
    onnx_path = save(program, 'onnx', tmp_path / 'proposals.onnx')
    with torch.no_grad():
        program_outputs = [program.module()(image) for image in images]
    onnx_run = load_runner(onnx_path, 'onnx', threads=1)
    for image, reference, program_output in zip(images, references, program_outputs):
        assert_outputs_match(program_output, reference, 1e-5)
        assert_outputs_match(onnx_run(image), reference, 1e-4)
    assert all(torch.isneginf(outputs[6]).any() for outputs in references)  # level 1 (dense fallback)
    level_0_skipped = [torch.isneginf(outputs[5]) for outputs in references]
    assert level_0_skipped[0].any() and not torch.equal(*level_0_skipped)


def test_sparse_heads_benchmark_runs_both_parts_at_a_small_size():
    """``tools/benchmark.py sparse_heads`` end to end at 112x112, one timed call: its rows, not its speed."""
    import argparse
    import warnings

    from plugin.benchmarks import sparse_heads
    args = argparse.Namespace(size=(112, 112), fractions=[0.5, 1.0], ratios=['cfg2'], threads=1, batch=2,
                              device=torch.device('cpu'), warmup=0, repeats=1, part='fpn-rpn')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a stage of 112x112 keeps no window at cfg2's ratios
        rows = sparse_heads.run(args)
    assert [row['pruning'] for row in rows] == ['dense (mmdet FPN + RPNHead)', 'cfg2']
    assert rows[1]['MACs ratio'] > 1.2 and rows[1]['kept fractions'].startswith('0.')
    rows = sparse_heads.run(argparse.Namespace(**{**vars(args), 'part': 'layer'}))
    assert [(row['layer'][:3], row['batch'], row['kept fraction']) for row in rows] == [
        ('3x3', 2, 0.5), ('3x3', 2, 1.0), ('1x1', 2, 0.5), ('1x1', 2, 1.0)]
