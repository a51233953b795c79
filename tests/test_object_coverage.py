"""Object coverage: the share of ground-truth object pixels inside the windows SparseViT kept, on hand-built cases."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData

from plugin.engine.hooks import ObjectCoverageHook
from plugin.models.backbones.sparsevit_swin import SparseViTSwin
from plugin.models.utils.records import ForwardRecord, hand_to_open_scopes
from plugin.visualization import StageWindows, object_coverage


def window_mask(shape, windows, side):
    """A mask of ``shape`` that is True on the listed (row, col) windows of ``side`` pixels."""
    mask = np.zeros(shape, dtype=bool)
    for row, col in windows:
        mask[row * side:(row + 1) * side, col * side:(col + 1) * side] = True
    return mask


def box_mask(shape, boxes):
    """True on the pixels of the (top, left, bottom, right) boxes."""
    mask = np.zeros(shape, dtype=bool)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


# A 32x32 image padded to a 32x48 input with 16-pixel windows: the top-left and bottom-right windows are
# kept, and so is the window in the padding, which must count for nothing.
# Box A (8x8 = 64 px) lies in the kept top-left window; box B (16 rows x 8 cols = 128 px) straddles the
# pruned top-right window (its upper 64 px) and the kept bottom-right one (its lower 64 px).
KEPT = [(0, 0), (1, 1), (0, 2)]
BOXES = [(4, 4, 12, 12), (8, 20, 24, 28)]
COVERAGE, KEPT_AREA = 128 / 192, 512 / 1024


def panel(mask, side):
    return StageWindows(stage=0, block=0, depth=2, ratio=0.5, kept=3, total=6, mask=mask, window_pixels=side)


def test_object_coverage_of_known_boxes_in_known_windows():
    stage = object_coverage([panel(window_mask((32, 48), KEPT, 16), 16)], box_mask((32, 32), BOXES), (32, 32))[0]
    assert (stage.object_pixels, stage.covered_object_pixels) == (192, 128)
    assert (stage.image_pixels, stage.kept_image_pixels) == (1024, 512)
    assert stage.coverage == pytest.approx(COVERAGE) and stage.kept_area == pytest.approx(KEPT_AREA)

    # the same image resized to 16x16 for the model: the windows are mapped back onto the 32x32 ground truth
    small = object_coverage([panel(window_mask((16, 24), KEPT, 8), 8)], box_mask((32, 32), BOXES), (16, 16))[0]
    assert small == stage

    # pooling two images adds their pixels
    empty = object_coverage([panel(window_mask((32, 48), KEPT, 16), 16)], np.zeros((32, 32), bool), (32, 32))[0]
    pooled = stage + empty
    assert pooled.coverage == pytest.approx(COVERAGE) and pooled.kept_area == pytest.approx(KEPT_AREA)
    assert np.isnan(empty.coverage)
    with pytest.raises(ValueError, match='2-D'):
        object_coverage([panel(window_mask((32, 48), KEPT, 16), 16)], np.zeros((1, 32, 32), bool), (32, 32))


def sample(boxes, with_masks=True):
    """A detection sample of a 32x32 image fed as a 32x48 batch, with its boxes as ground truth."""
    data_sample = DetDataSample(metainfo=dict(batch_input_shape=(32, 48), img_shape=(32, 32), ori_shape=(32, 32)))
    instances = InstanceData(bboxes=torch.tensor([[left, top, right, bottom] for top, left, bottom, right in boxes],
                                                 dtype=torch.float32))
    if with_masks:
        instances.masks = BitmapMasks(np.stack([box_mask((32, 32), [box]) for box in boxes]), 32, 32)
    data_sample.gt_instances = instances
    return data_sample


def with_first_blocks_keeping(record: ForwardRecord, kept: dict) -> ForwardRecord:
    """``record`` with the first block of each stage in ``kept`` keeping the given ``(B, k)`` windows."""
    stages = list(record.stages)
    for stage, windows in kept.items():
        first = dataclasses.replace(stages[stage].blocks[0], kept=windows)
        stages[stage] = dataclasses.replace(stages[stage], blocks=(first, *stages[stage].blocks[1:]))
    return dataclasses.replace(record, stages=tuple(stages))


@pytest.mark.parametrize('ground_truth', ['masks', 'boxes'])
def test_coverage_hook_adds_pooled_coverage_per_stage_to_the_metrics(ground_truth):
    # a real backbone with 16-pixel windows at stage 1 (patch 4 x window 4), 32 at stage 2, ...
    backbone = SparseViTSwin(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                             drop_path_rate=0., pruning_ratios=[0.5, 0.5, 0., 0.]).eval()
    with torch.no_grad():
        _, record = backbone.forward_with_record(torch.randn(2, 3, 32, 48))
    # known kept windows: stage 1 has a 2x3 grid of windows; image 0 keeps the windows of KEPT, image 1 the
    # top row. Stage 2 (one row of two 32-pixel windows over the 32x48 input) keeps the left one in both.
    record = with_first_blocks_keeping(record, {0: torch.tensor([[0, 4, 2], [0, 1, 2]]), 1: torch.tensor([[0], [0]])})
    model = nn.Module()
    model.backbone = backbone
    runner = SimpleNamespace(model=model)

    hook = ObjectCoverageHook(ground_truth=ground_truth)
    hook.before_run(runner)
    hook.before_test_epoch(runner)
    hook.before_test_iter(runner, 0)
    hand_to_open_scopes(record)  # the iteration's backbone pass
    hook.after_test_iter(runner, 0, None, outputs=[sample(BOXES), sample(BOXES)])
    metrics = {'coco/bbox_mAP': 0.5}
    hook.after_test_epoch(runner, metrics)

    # image 1 keeps the top row: all of box A (64) and the upper half of box B (64), 512 image pixels
    assert metrics['coverage/stage1'] == pytest.approx((128 + 128) / 384)
    assert metrics['kept_area/stage1'] == pytest.approx((512 + 512) / 2048)
    # stage 2's left window holds columns 0-31 of the 32x32 image: everything
    assert metrics['coverage/stage2'] == metrics['kept_area/stage2'] == 1.0
    assert metrics['coverage/stage3'] == metrics['coverage/stage4'] == 1.0  # dense
    assert metrics['coco/bbox_mAP'] == 0.5

    # a new run starts from zero
    hook.before_test_epoch(runner)
    hook.before_test_iter(runner, 0)
    hand_to_open_scopes(record)
    hook.after_test_iter(runner, 0, None, outputs=[sample(BOXES)])
    hook.after_test_epoch(runner, metrics)
    assert metrics['coverage/stage1'] == pytest.approx(COVERAGE)


def test_coverage_hook_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="ground_truth must be one of \\('masks', 'boxes'\\)"):
        ObjectCoverageHook(ground_truth='polygons')
    backbone = SparseViTSwin(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                             pruning_ratios=[0.5, 0., 0., 0.]).eval()
    model = nn.Module()
    model.backbone = backbone
    runner = SimpleNamespace(model=model)
    hook = ObjectCoverageHook()
    hook.before_test_iter(runner, 0)
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r'LoadAnnotations\(with_mask=True\)'):
        hook.after_test_iter(runner, 0, None, outputs=[sample(BOXES, with_masks=False)])
    with pytest.raises(TypeError, match='window-sparse backbone'):
        ObjectCoverageHook().before_run(SimpleNamespace(model=nn.Module()))
    # an iteration whose model ran no recording backbone (or ran it twice) has nothing to count
    hook.before_test_iter(runner, 1)
    with pytest.raises(RuntimeError, match='this one ran 0'):
        hook.after_test_iter(runner, 1, None, outputs=[sample(BOXES)])
    # outside an iteration nothing is recorded: the last scope was closed
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 48))
    hook.before_test_iter(runner, 2)
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 48))
        backbone(torch.randn(1, 3, 32, 48))
    with pytest.raises(RuntimeError, match='this one ran 2'):
        hook.after_test_iter(runner, 2, None, outputs=[sample(BOXES)])
