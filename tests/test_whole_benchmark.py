"""The whole-model benchmark suite: parts that add up, the Amdahl bound, held detection counts, clear errors."""
import argparse

import pytest
import torch

from plugin.benchmarks import whole
from plugin.utils.cli import run_tool


def test_amdahl_bound():
    assert whole.amdahl_bound(0.0, 3.0) == 1.0
    assert whole.amdahl_bound(1.0, 3.0) == pytest.approx(3.0)
    # a quarter of the time in a backbone made 1.5x faster: 1 / (0.75 + 0.25 / 1.5)
    assert whole.amdahl_bound(0.25, 1.5) == pytest.approx(1 / (0.75 + 0.25 / 1.5))


def test_macs_bound_scales_each_part_of_the_reference_by_its_macs_ratio():
    reference_ms = {'preprocess': 10., 'backbone': 100., 'neck': 50., 'heads': 200., 'dense head': 40., 'total': 360.}
    reference_macs = {'backbone': 40., 'neck': 20., 'heads': 60., 'dense head': 20., 'total': 120.}
    macs = {'backbone': 20., 'neck': 10., 'heads': 50., 'dense head': 10., 'total': 80.}
    # backbone 100 / 2, neck 50 / 2, dense head 40 / 2, the rest of the heads (160 ms, 40 GMACs in both) as it is
    assert whole.macs_bound(reference_ms, reference_macs, macs) == pytest.approx(360 / (10 + 50 + 25 + 20 + 160))
    assert whole.macs_bound(reference_ms, reference_macs, reference_macs) == pytest.approx(1.0)
    # No dense head timed (a segmentor): the heads scale as a whole.
    without_head = {key: value for key, value in reference_ms.items() if key != 'dense head'}
    assert whole.macs_bound(without_head, reference_macs, macs) == pytest.approx(
        360 / (10 + 50 + 25 + 200 * 50 / 60))


def test_part_timer_attributes_every_millisecond_to_one_part():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.data_preprocessor = torch.nn.Identity()
            self.backbone = torch.nn.Linear(64, 64)
            self.neck = torch.nn.Linear(64, 64)

        def test_step(self, x):
            return (self.neck(self.backbone(self.data_preprocessor(x))) @ torch.ones(64, 64)).sum()

    model = Toy()
    parts = whole.PartTimer(model, torch.device('cpu')).time(lambda: model.test_step(torch.randn(256, 64)))
    assert set(parts) == {'preprocess', 'backbone', 'neck', 'heads', 'total'}
    assert all(value >= 0 for value in parts.values())
    assert sum(parts[part] for part in whole.PARTS) == pytest.approx(parts['total'])

    class TwoStage(Toy):
        def __init__(self):
            super().__init__()
            self.rpn_head = torch.nn.Linear(64, 64)

        def test_step(self, x):
            features = self.neck(self.backbone(self.data_preprocessor(x)))
            return (self.rpn_head(features) @ torch.ones(64, 64)).sum()

    model = TwoStage()
    parts = whole.PartTimer(model, torch.device('cpu')).time(lambda: model.test_step(torch.randn(256, 64)))
    assert 0 < parts['dense head'] < parts['heads']
    assert sum(parts[part] for part in whole.PARTS) == pytest.approx(parts['total'])


@pytest.mark.slow
def test_semantic_fpn_rows_compare_pruned_and_dense_at_the_same_weights(capsys):
    args = argparse.Namespace(tasks=['semantic-fpn'], rows=['SparseViT-Swin-T cfg2'], batches=[1], size=(96, 128),
                              threads=None, detections=None, device=torch.device('cpu'), warmup=0, repeats=1,
                              runtimes=['torch'], ort_batches=[1])
    rows = whole.run(args)
    assert [row['model'] for row in rows] == ['SparseViT-Swin-T dense', 'SparseViT-Swin-T cfg2']
    dense, pruned = rows
    assert pruned['backbone GMACs'] < dense['backbone GMACs']
    assert pruned['neck+heads GMACs'] == pytest.approx(dense['neck+heads GMACs'])
    assert pruned['whole MACs ratio'] == pytest.approx(dense['whole GMACs'] / pruned['whole GMACs'])
    share = dense['backbone ms'] / dense['whole ms']
    assert pruned['Amdahl bound'] == pytest.approx(whole.amdahl_bound(share, pruned['backbone speedup']))
    assert pruned['eff_whole'] == pytest.approx(pruned['whole speedup'] / pruned['Amdahl bound'])
    # mmseg runs its decode head without module hooks: no dense head apart, the heads scale as a whole.
    assert pruned['dense head ms'] is None
    assert pruned['MACs bound'] == pytest.approx(dense['whole ms'] / (
        dense['preprocess ms'] + dense['backbone ms'] * pruned['backbone GMACs'] / dense['backbone GMACs']
        + dense['neck ms'] + dense['heads ms']), rel=1e-3)
    assert pruned['eff_macs'] == pytest.approx(pruned['whole speedup'] / pruned['MACs bound'])


@pytest.mark.slow
def test_mono3d_rows_run_mmdet3d_models_from_a_packed_batch():
    args = argparse.Namespace(tasks=['fcos3d'], rows=['SparseViT-Swin-T cfg2, sparse all the way'], batches=[1],
                              size=(96, 160), threads=None, detections=None, device=torch.device('cpu'), warmup=0,
                              repeats=1, runtimes=['torch'], ort_batches=[1])
    dense, sparse = whole.run(args)
    assert (dense['model'], sparse['model']) == ('SparseViT-Swin-T dense', 'SparseViT-Swin-T cfg2, sparse all the way')
    assert sparse['neck+heads GMACs'] < dense['neck+heads GMACs'] and sparse['whole ms'] > sparse['backbone ms'] > 0
    assert 0 < sparse['dense head ms'] < sparse['heads ms']
    assert sparse['MACs bound'] > 1


@pytest.mark.slow
def test_detection_counts_are_held_equal_in_a_pair():
    task = whole.TASKS['mask-rcnn']
    dense_spec, pruned_spec = task.models[0], task.models[2]
    dense = whole.build_model(dense_spec, None, detections=7)
    pruned = whole.build_model(pruned_spec, dense, detections=7)
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), pruned.state_dict().values()))
    data = whole.packed_batch('mmdet', whole.photographs((96, 96), 2))
    with torch.no_grad():
        assert whole.counted_outputs(dense.test_step(data)) == whole.counted_outputs(pruned.test_step(data)) == '7/7'


def test_unknown_rows_are_refused_with_the_known_ones(capsys):
    assert run_tool(lambda argv: whole.run(argparse.Namespace(
        tasks=['semantic-fpn'], rows=['no such row'], batches=[1], size=None, threads=None, detections=None,
        device=torch.device('cpu'), warmup=0, repeats=1, runtimes=['torch'], ort_batches=[1]))) == 2
    assert "--rows ['no such row'] are not rows of the tasks ['semantic-fpn']" in capsys.readouterr().err


@pytest.mark.parametrize('runtimes, device, message', [
    (['graph'], 'cpu', '--runtimes graph replays the backbone from a CUDA graph: it needs --device cuda'),
    (['ort'], 'meta', 'the whole suite runs on the CPU or a CUDA GPU, got --device meta'),
])
def test_runtimes_a_device_cannot_run_are_refused(capsys, runtimes, device, message):
    args = argparse.Namespace(tasks=['semantic-fpn'], rows=None, batches=[1], size=None, threads=None,
                              detections=None, device=torch.device(device), warmup=0, repeats=1, runtimes=runtimes,
                              ort_batches=[1])
    assert run_tool(lambda argv: whole.run(args)) == 2
    assert message in capsys.readouterr().err
