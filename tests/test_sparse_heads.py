"""SparseRPNHead and the sparse FCOS3D/PGD heads against mmdet's and mmdet3d's heads at the same weights, and
against plainly written references of what skipped tiles give."""
import copy
import functools
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kept_tiles import every_tile, masked_group_norm_reference, random_tiles
from mmcv.cnn import ConvModule
from mmdet.models.utils import images_to_levels, multi_apply
from mmdet3d.structures import CameraInstance3DBoxes
from mmengine.hub import get_config
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import InstanceData
from random_weights import randomize

from plugin.models.dense_heads import sparse_mono3d_heads, sparse_rpn_head  # noqa: F401  (registration)
from plugin.models.utils.records import KeptTiles
from plugin.models.utils.tile_conv import COMPUTE_MODES, SparseFeatures, computed_as

BATCH = 2
TILE = 4
IMAGE = (75, 110)
# Mask R-CNN's FPN levels of a 75x110 image (strides 4..64).
RPN_SHAPES = [(19, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
RPN_CHANNELS = 7

pytestmark = pytest.mark.usefixtures('one_thread')


def image_metas() -> list[dict]:
    return [dict(img_shape=IMAGE, pad_shape=IMAGE, batch_input_shape=IMAGE, scale_factor=(1., 1.))
            for _ in range(BATCH)]


def kept_mask(tiles: KeptTiles | None, feature: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` True where the head computes."""
    if tiles is None:
        return torch.ones(feature.shape[0], 1, *feature.shape[2:], dtype=torch.bool)
    return tiles.mask().unsqueeze(1)


def randomize_biases(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('bias'):
                param.normal_(0, 0.5)  # heads initialise them at constants, which would hide a missing bias
    return module


# --------------------------------------------------------------------------------------------------- RPN


def rpn_config(**overrides) -> dict:
    model = get_config('mmdet::_base_/models/mask-rcnn_r50_fpn.py').model
    return dict(model.rpn_head, in_channels=RPN_CHANNELS, feat_channels=8, train_cfg=model.train_cfg.rpn,
                test_cfg=model.test_cfg.rpn, **overrides)


@pytest.fixture(scope='module', params=[1, 2], ids=['one-conv', 'two-convs'])
def rpn_heads(request):
    """mmdet's RPNHead and SparseRPNHead at its weights (num_convs 1: Mask R-CNN's; 2: ConvModules)."""
    init_default_scope('mmdet')
    torch.manual_seed(0)
    reference = MODELS.build(rpn_config(num_convs=request.param))
    reference.init_weights()
    randomize_biases(reference)
    sparse = MODELS.build(rpn_config(type='SparseRPNHead', num_convs=request.param))
    sparse.load_state_dict(reference.state_dict(), strict=True)
    return reference, sparse


@pytest.fixture(scope='module')
def rpn_inputs():
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(BATCH, RPN_CHANNELS, *shape, generator=generator) for shape in RPN_SHAPES]
    tiles = [random_tiles(BATCH, RPN_SHAPES[0], TILE, 14, generator), None,
             random_tiles(BATCH, RPN_SHAPES[2], TILE, 1, generator), None, None]
    return features, tiles


def reference_rpn_outputs(head, features, tiles) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """mmdet's RPN outputs, with the second conv (num_convs 2) reading zeros around the kept tiles, then -inf
    logits and zero deltas on the skipped tiles."""
    cls_scores, bbox_preds = [], []
    for x, level_tiles in zip(features, tiles):
        mask = kept_mask(level_tiles, x)
        if isinstance(head.rpn_conv, nn.Sequential):
            hidden = head.rpn_conv[0](x) * mask
            hidden = F.relu(head.rpn_conv[1](hidden))
        else:
            hidden = F.relu(head.rpn_conv(x))
        cls_scores.append(torch.where(mask, head.rpn_cls(hidden), torch.tensor(float('-inf'))))
        bbox_preds.append(torch.where(mask, head.rpn_reg(hidden), torch.tensor(0.)))
    return cls_scores, bbox_preds


def assert_maps_equal(outputs, references):
    assert len(outputs) == len(references)
    for output, reference in zip(outputs, references):
        assert output.shape == reference.shape
        assert torch.equal(torch.isneginf(output), torch.isneginf(reference))
        finite = torch.isfinite(reference)
        torch.testing.assert_close(output[finite], reference[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_rpn_with_every_tile_kept_is_mmdet_rpn_head(rpn_heads, rpn_inputs, mode):
    reference, sparse = rpn_heads
    features, _ = rpn_inputs
    everywhere = SparseFeatures(features, [every_tile(BATCH, shape, TILE) for shape in RPN_SHAPES])
    with torch.no_grad(), computed_as(mode):
        expected = reference(features)
        for out, ref in zip(sparse(everywhere), expected):
            assert_maps_equal(out, ref)
        for out, ref in zip(sparse(tuple(features)), expected):
            assert_maps_equal(out, ref)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_rpn_skipped_anchors_get_minus_infinity_and_kept_ones_the_reference(rpn_heads, rpn_inputs, mode):
    reference, sparse = rpn_heads
    features, tiles = rpn_inputs
    with torch.no_grad():
        expected = reference_rpn_outputs(reference, features, tiles)
        with computed_as(mode):
            outputs = sparse(SparseFeatures(features, tiles))
    for out, ref in zip(outputs, expected):
        assert_maps_equal(out, ref)
    assert torch.isneginf(outputs[0][0]).any() and not torch.isneginf(outputs[1][0]).any()


def test_proposals_come_from_computed_anchors_only(rpn_heads, rpn_inputs):
    """With zero deltas each proposal is its anchor's box: every proposal is a computed anchor's box, and
    none is a box that only skipped anchors have, although a kept fraction this small leaves mmdet's
    top-k fewer computed anchors than it takes."""
    _, sparse = rpn_heads
    features, tiles = rpn_inputs
    head = copy.deepcopy(sparse).eval()
    with torch.no_grad():
        head.rpn_reg.weight.zero_()
        head.rpn_reg.bias.zero_()
        cls_scores, bbox_preds = head(SparseFeatures(features, tiles))
        cfg = copy.deepcopy(head.test_cfg)
        cfg.update(nms_pre=100000, max_per_img=100000, nms=dict(type='nms', iou_threshold=0.99))
        results = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=image_metas(), cfg=cfg)
        anchors = head.prior_generator.grid_priors([f.shape[2:] for f in features], device='cpu')
    for image, result in enumerate(results):
        computed, skipped = set(), set()
        for level, level_anchors in enumerate(anchors):
            boxes = head.bbox_coder.decode(level_anchors, torch.zeros_like(level_anchors), max_shape=IMAGE)
            level_computed = ~torch.isneginf(cls_scores[level][image]).permute(1, 2, 0).reshape(-1)
            computed |= {tuple(box) for box in boxes[level_computed].tolist()}
            skipped |= {tuple(box) for box in boxes[~level_computed].tolist()}
        proposals = {tuple(box) for box in result.bboxes.tolist()}
        assert proposals and proposals <= computed
        assert not proposals & (skipped - computed)
        assert (result.scores > 0).all()


def reference_rpn_loss(head, cls_scores, bbox_preds, computed, gt_instances, metas) -> dict:
    """mmdet's ``AnchorHead.loss_by_feat`` with the valid flags of the skipped anchors cleared by hand."""
    sizes = [score.shape[2:] for score in cls_scores]
    anchor_list, valid_flag_list = head.get_anchors(sizes, metas, device='cpu')
    valid_flag_list = [[flags & computed[level][image] for level, flags in enumerate(image_flags)]
                       for image, image_flags in enumerate(valid_flag_list)]
    labels, label_weights, bbox_targets, bbox_weights, avg_factor = head.get_targets(
        anchor_list, valid_flag_list, gt_instances, metas)
    level_anchors = images_to_levels([torch.cat(anchors) for anchors in anchor_list],
                                     [anchors.shape[0] for anchors in anchor_list[0]])
    losses_cls, losses_bbox = multi_apply(head.loss_by_feat_single, cls_scores, bbox_preds, level_anchors, labels,
                                          label_weights, bbox_targets, bbox_weights, avg_factor=avg_factor)
    return dict(loss_rpn_cls=losses_cls, loss_rpn_bbox=losses_bbox)


def rpn_ground_truth() -> list[InstanceData]:
    generator = torch.Generator().manual_seed(2)
    instances = []
    for _ in range(BATCH):
        corners = torch.rand(4, 2, generator=generator) * torch.tensor([IMAGE[1], IMAGE[0]])
        sizes = 8 + torch.rand(4, 2, generator=generator) * 30
        boxes = torch.cat([corners, corners + sizes], 1).clamp(max=torch.tensor([IMAGE[1], IMAGE[0]] * 2) - 1.)
        instances.append(InstanceData(bboxes=boxes, labels=torch.zeros(4, dtype=torch.long)))
    return instances


def test_rpn_loss_treats_skipped_anchors_as_invalid_and_trains_every_parameter(rpn_heads, rpn_inputs):
    """The sparse loss is mmdet's with the skipped anchors invalid, computed on the reference outputs (with any
    finite value at skipped anchors, which then must not matter); the gradients reach every parameter alike."""
    reference, sparse = rpn_heads
    features, tiles = rpn_inputs
    reference, sparse = copy.deepcopy(reference).train(), copy.deepcopy(sparse).train()
    gt_instances, metas = rpn_ground_truth(), image_metas()
    torch.manual_seed(0)  # the positive and negative samples are drawn at random
    with computed_as('tiles'):
        cls_scores, bbox_preds = sparse(SparseFeatures(features, tiles))
    losses = sparse.loss_by_feat(cls_scores, bbox_preds, gt_instances, metas)
    computed = [~torch.isneginf(score).permute(0, 2, 3, 1).reshape(BATCH, -1) for score in cls_scores]
    torch.manual_seed(0)
    reference_scores, reference_preds = reference_rpn_outputs(reference, features, tiles)
    reference_scores = [score.nan_to_num(neginf=3.) for score in reference_scores]
    expected = reference_rpn_loss(reference, reference_scores, reference_preds, computed, gt_instances, metas)
    for key in expected:
        torch.testing.assert_close(torch.stack(losses[key]), torch.stack(expected[key]), rtol=1e-5, atol=1e-6)
    total = sum(sum(values) for values in losses.values())
    assert torch.isfinite(total)
    total.backward()
    sum(sum(values) for values in expected.values()).backward()
    reference_grads = dict(reference.named_parameters())
    for name, param in sparse.named_parameters():
        assert param.grad is not None and param.grad.any(), name
        torch.testing.assert_close(param.grad, reference_grads[name].grad, rtol=1e-4, atol=1e-6)


def test_rpn_refuses_tiles_of_another_map(rpn_heads, rpn_inputs):
    _, sparse = rpn_heads
    features, tiles = rpn_inputs
    with pytest.raises(ValueError, match=r'SparseRPNHead: the kept tiles describe a \(10, 14\) map'):
        sparse.forward_single(features[0], KeptTiles(tiles[0].index, TILE, RPN_SHAPES[1]))


# ----------------------------------------------------------------------------------------- FCOS3D and PGD

MONO3D_CHANNELS = 32  # GroupNorm(32) of the configs: one channel per group
# FCOS3D's levels (strides 8..128) and PGD's (strides 4..32) of a 75x110 image.
FCOS3D_SHAPES = [(10, 14), (5, 7), (3, 4), (2, 2), (1, 1)]
PGD_SHAPES = [(19, 28), (10, 14), (5, 7), (3, 4)]


def mono3d_head_config(name: str, sparse_type: str | None = None) -> dict:
    """The head of an mmdet3d config, every 256-wide layer ``MONO3D_CHANNELS`` wide."""
    model = get_config(name).model
    head = dict(model.bbox_head, in_channels=MONO3D_CHANNELS, feat_channels=MONO3D_CHANNELS,
                train_cfg=model.train_cfg, test_cfg=model.test_cfg)

    def narrow(value):
        return tuple(narrow(v) for v in value) if isinstance(value, (tuple, list)) else MONO3D_CHANNELS
    for key in [key for key in head if key.endswith('_branch')]:
        head[key] = narrow(head[key])
    if sparse_type:
        head['type'] = sparse_type
    return head


HEADS = {
    'fcos3d': ('mmdet3d::_base_/models/fcos3d.py', 'SparseFCOSMono3DHead', FCOS3D_SHAPES),
    'pgd': ('mmdet3d::pgd/pgd_r101-caffe_fpn_head-gn_4xb3-4x_kitti-mono3d.py', 'SparsePGDHead', PGD_SHAPES),
}


@functools.lru_cache(maxsize=None)
def build_mono3d_case(name: str) -> tuple:
    """mmdet3d's head (deformable last convs, GroupNorm), the sparse head at its weights, inputs and tiles."""
    config, sparse_type, shapes = HEADS[name]
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    reference = MODELS.build(mono3d_head_config(config))
    reference.init_weights()
    randomize_biases(randomize(reference))
    with torch.no_grad():
        for module in reference.modules():
            if hasattr(module, 'conv_offset'):
                module.conv_offset.weight.normal_(0, 0.05)  # mmcv starts the offsets at zero: a plain conv
                module.conv_offset.bias.normal_(0, 0.5)
            elif isinstance(module, nn.Conv2d):
                module.weight.normal_(0, 0.1)
    sparse = MODELS.build(mono3d_head_config(config, sparse_type))
    sparse.load_state_dict(reference.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(BATCH, MONO3D_CHANNELS, *shape, generator=generator) for shape in shapes]
    tiles = [random_tiles(BATCH, shapes[0], TILE, 5, generator), random_tiles(BATCH, shapes[1], TILE, 2, generator)]
    tiles += [None] * (len(shapes) - 2)
    return reference.eval(), sparse.eval(), features, tiles


@pytest.fixture(params=list(HEADS))
def mono3d_case(request):
    return build_mono3d_case(request.param)


@pytest.fixture
def fcos3d_case():
    return build_mono3d_case('fcos3d')


def masked_mono3d_head(head: nn.Module, features, tiles) -> nn.Module:
    """A copy of mmdet3d's head whose every ConvModule computes as on kept tiles: its GroupNorm with statistics
    over the kept pixels, its output zero around them (so a later 3x3 layer reads zeros there)."""
    head = copy.deepcopy(head)
    masks = {tuple(x.shape[2:]): kept_mask(level_tiles, x) for x, level_tiles in zip(features, tiles)}

    def masked_forward(module: ConvModule, x: torch.Tensor) -> torch.Tensor:
        mask = masks[tuple(x.shape[2:])]
        out = module.conv(x)
        if module.with_norm:
            out = masked_group_norm_reference(module.norm, out, mask[:, 0])
        return module.activate(out) * mask
    for module in head.modules():
        if isinstance(module, ConvModule):
            module.forward = types.MethodType(masked_forward, module)
    return head


def assert_close_at_scale(output: torch.Tensor, reference: torch.Tensor) -> None:
    """Float error relative to the map's scale: PGD multiplies keypoint offsets by its regression range (64)."""
    scale = float(reference.abs().max()) if reference.numel() else 1.
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5 * max(scale, 1.))


def assert_mono3d_outputs_equal(outputs, references, features, tiles):
    """Equal on the computed points; on skipped ones the classification logit is -inf."""
    for output_levels, reference_levels in zip(outputs, references):
        if output_levels[0] is None:
            assert all(level is None for level in reference_levels)
            continue
        for index, (output, reference) in enumerate(zip(output_levels, reference_levels)):
            mask = kept_mask(tiles[index], features[index]).expand_as(output)
            assert_close_at_scale(output[mask], reference[mask])
    for score, level_tiles, x in zip(outputs[0], tiles, features):
        assert torch.equal(torch.isneginf(score), ~kept_mask(level_tiles, x).expand_as(score))


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_mono3d_head_with_every_tile_kept_is_mmdet3d_head(mono3d_case, mode):
    reference, sparse, features, _ = mono3d_case
    everywhere = [every_tile(BATCH, x.shape[2:], TILE) for x in features]
    with torch.no_grad():
        expected = reference(features)
        with computed_as(mode):
            outputs = sparse(SparseFeatures(features, everywhere))
    assert len(outputs) == len(expected)
    for output_levels, reference_levels in zip(outputs, expected):
        for output, ref in zip(output_levels, reference_levels):
            if ref is None:
                assert output is None
            else:
                assert_close_at_scale(output, ref)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_mono3d_head_on_kept_tiles_equals_the_masked_reference(mono3d_case, mode):
    reference, sparse, features, tiles = mono3d_case
    with torch.no_grad():
        expected = masked_mono3d_head(reference, features, tiles)(features)
        with computed_as(mode):
            outputs = sparse(SparseFeatures(features, tiles))
    assert_mono3d_outputs_equal(outputs, expected, features, tiles)


def fcos3d_ground_truth(num_classes: int) -> tuple[list[InstanceData], list[InstanceData]]:
    """Objects of 10-40 pixels around the image, as FCOS3D's targets read them (nuScenes: 9-value boxes)."""
    generator = torch.Generator().manual_seed(4)
    instances_3d, instances = [], []
    for _ in range(BATCH):
        count = 6
        centers = torch.rand(count, 2, generator=generator) * torch.tensor([IMAGE[1], IMAGE[0]])
        half = 5 + torch.rand(count, 2, generator=generator) * 15
        boxes_3d = torch.rand(count, 9, generator=generator)
        boxes_3d[:, 2] += 10.  # depth
        boxes_3d[:, 3:6] += 1.  # sizes
        labels = torch.randint(0, num_classes, (count, ), generator=generator)
        instances_3d.append(InstanceData(
            bboxes_3d=CameraInstance3DBoxes(boxes_3d, box_dim=9), labels_3d=labels, centers_2d=centers,
            depths=boxes_3d[:, 2].clone(), attr_labels=torch.randint(0, 9, (count, ), generator=generator)))
        instances.append(InstanceData(bboxes=torch.cat([centers - half, centers + half], 1), labels=labels))
    return instances_3d, instances


def test_fcos3d_loss_ignores_skipped_points_and_trains_every_parameter(fcos3d_case):
    """Classification loss over the computed points only (a plain focal loss over them), no positive in a skipped
    tile (with every tile skipped every loss is 0), and gradients in every parameter."""
    reference, sparse, features, tiles = fcos3d_case
    head = copy.deepcopy(sparse).train()
    reference = copy.deepcopy(reference).train()
    gt_instances_3d, gt_instances = fcos3d_ground_truth(head.num_classes)
    metas = image_metas()
    with computed_as('tiles'):
        outputs = head(SparseFeatures(features, tiles))
    losses = head.loss_by_feat(*outputs, gt_instances_3d, gt_instances, metas)

    cls_scores = outputs[0]
    points = head.get_points([score.shape[2:] for score in cls_scores], cls_scores[0].dtype, 'cpu')
    labels = torch.cat(head.get_targets(points, gt_instances_3d, gt_instances)[0])
    scores = torch.cat([score.permute(0, 2, 3, 1).reshape(-1, head.cls_out_channels) for score in cls_scores])
    computed = ~torch.isneginf(scores[:, 0])
    positives = (labels < head.num_classes) & computed
    assert positives.any() and ((labels < head.num_classes) & ~computed).any()
    expected = head.loss_cls(scores[computed], labels[computed], avg_factor=int(positives.sum()) + BATCH)
    torch.testing.assert_close(losses['loss_cls'], expected)

    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    sum(reference.loss_by_feat(*reference(features), gt_instances_3d, gt_instances, metas).values()).backward()

    def untrained(model):
        return {name for name, param in model.named_parameters() if param.grad is None or not param.grad.any()}
    # Objects of a 75x110 image are too small for the coarser levels' regression ranges, dense or sparse.
    assert untrained(head) == untrained(reference) and all(name.startswith('scales.') for name in untrained(head))

    nothing_kept = [KeptTiles(torch.zeros(BATCH, 0, dtype=torch.long), TILE, tuple(x.shape[2:])) for x in features]
    with torch.no_grad(), computed_as('tiles'):
        outputs = head(SparseFeatures(features, nothing_kept))
        losses = head.loss_by_feat(*outputs, gt_instances_3d, gt_instances, metas)
    assert all(value == 0 for value in losses.values()), losses


def test_fcos3d_predicts_nothing_from_skipped_points(fcos3d_case):
    """At a score threshold of 0 mmdet3d's head predicts boxes; with every tile skipped the sparse head none."""
    reference, sparse, features, _ = fcos3d_case
    metas = [dict(meta, cam2img=torch.eye(4)[:3].tolist(), box_type_3d=CameraInstance3DBoxes)
             for meta in image_metas()]
    cfg = copy.deepcopy(sparse.test_cfg)
    cfg.score_thr = 0.
    nothing_kept = [KeptTiles(torch.zeros(BATCH, 0, dtype=torch.long), TILE, tuple(x.shape[2:])) for x in features]
    with torch.no_grad():
        dense, _ = reference.predict_by_feat(*reference(features), batch_img_metas=metas, cfg=cfg)
        sparse_results, _ = sparse.predict_by_feat(*sparse(SparseFeatures(features, nothing_kept)),
                                                batch_img_metas=metas, cfg=cfg)
    assert all(len(result.scores_3d) > 0 for result in dense)
    assert all(len(result.scores_3d) == 0 for result in sparse_results)

