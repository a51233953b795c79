"""Monocular 3D detection: the configs under configs/mono3d/ and the CPU path of the KITTI metric.

Every config builds, takes one training step on the synthetic KITTI-style data
(finite losses, gradients in every trainable backbone parameter, weights that
move) and predicts; the PGD config also trains and tests through mmengine's
Runner, its KITTI metric included. Backbones keep their real sizes; the neck and
head keep their structure at 64 channels instead of 256 (their dense stride-4
convolutions would otherwise take most of the time); one 64x224 image per batch,
no pretrained weights. The nuScenes configs read the same synthetic frames,
turned into nuScenes-style samples (9-value boxes, nuScenes labels and attributes).

mmdet3d's KITTI metric computes rotated overlaps with a numba CUDA kernel. This
machine has no GPU, so the kernel is run by numba's CUDA simulator (in a
subprocess: the simulator is chosen when numba is first imported) as the
reference for ``rotated_iou_cpu``, and the metric is checked end to end on a
case whose APs follow by hand.
"""
import copy
import importlib.util
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, METRICS, MODELS, init_default_scope
from mmengine.structures import InstanceData

import plugin  # noqa: F401  (registers the project's modules)
from plugin.demo_data.synthetic import write_kitti_mono3d

pytest.importorskip('mmdet3d')
from mmdet3d.structures import CameraInstance3DBoxes, Det3DDataSample, points_cam2img  # noqa: E402

from plugin.evaluation.kitti_mono_metric import kitti_overlaps_on_cpu, rotated_iou_cpu  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'mono3d'
CONFIGS = sorted(CONFIG_DIR.glob('*.py'))
IMAGE_SIZE = (64, 224)
BATCH_SIZE = 1
HEAD_CHANNELS = 64
KITTI_CLASSES = ('Pedestrian', 'Cyclist', 'Car')
# nuScenes label and attribute of each synthetic KITTI class: pedestrian (standing),
# bicycle (with rider), car (parked), in the order of mmdet3d's NuScenesMetric.
NUSCENES_LABELS = torch.tensor([7, 5, 0])
NUSCENES_ATTRIBUTES = torch.tensor([3, 0, 6])


def narrowed(model_cfg: Config, channels: int) -> Config:
    """The model with every 256-wide neck output and head layer ``channels`` wide."""
    def narrow(value):
        return tuple(narrow(v) for v in value) if isinstance(value, (tuple, list)) else channels
    model_cfg.neck.out_channels = channels
    head = model_cfg.bbox_head
    head.in_channels = head.feat_channels = channels
    for key in [key for key in head if key.endswith('_branch')]:
        head[key] = narrow(head[key])
    return model_cfg


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def synthetic_kitti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kitti_mono3d(tmp_path_factory.mktemp('mono3d'), seed=0, num_train=BATCH_SIZE,
                              num_val=BATCH_SIZE, image_size=IMAGE_SIZE)


def at_image_size(pipeline: list) -> list:
    """The pipeline with every resize keeping the synthetic images at their size."""
    height, width = IMAGE_SIZE
    return [dict(type=step['type'], scale=(width, height), keep_ratio=True) if step['type'].endswith('Resize')
            else step for step in pipeline]


def kitti_dataset_cfg(cfg: Config, root: Path, split: str) -> dict:
    """The config's own KITTI dataset and pipeline, reading the synthetic split."""
    loader = cfg.train_dataloader if split == 'train' else cfg.test_dataloader
    dataset = copy.deepcopy(loader.dataset)
    dataset.update(data_root=str(root), ann_file=f'kitti_infos_{split}.pkl', pipeline=at_image_size(dataset.pipeline))
    return dataset


def nuscenes_dataset_cfg(cfg: Config, root: Path, split: str) -> dict:
    """The config's nuScenes pipeline on a KITTI dataset of the synthetic split (there are no attribute labels)."""
    loader = cfg.train_dataloader if split == 'train' else cfg.test_dataloader
    pipeline = at_image_size(copy.deepcopy(loader.dataset.pipeline))
    for step in pipeline:
        if step['type'] == 'LoadAnnotations3D':
            step['with_attr_label'] = False
        if step['type'] == 'Pack3DDetInputs':
            step['keys'] = [key for key in step['keys'] if key != 'attr_labels']
    return dict(type='KittiDataset', data_root=str(root), ann_file=f'kitti_infos_{split}.pkl',
                data_prefix=dict(img='training/image_2'), pipeline=pipeline, load_type='fov_image_based',
                modality=dict(use_lidar=False, use_camera=True), metainfo=dict(classes=KITTI_CLASSES),
                box_type_3d='Camera', test_mode=split != 'train')


def as_nuscenes_sample(sample: Det3DDataSample) -> Det3DDataSample:
    """nuScenes boxes carry a velocity (zero here), nuScenes labels and attributes."""
    boxes = sample.gt_instances_3d.bboxes_3d
    velocities = boxes.tensor.new_zeros(len(boxes), 2)
    sample.gt_instances_3d.bboxes_3d = CameraInstance3DBoxes(torch.cat([boxes.tensor, velocities], 1), box_dim=9)
    sample.gt_instances_3d.attr_labels = NUSCENES_ATTRIBUTES[sample.gt_instances_3d.labels_3d]
    sample.gt_instances_3d.labels_3d = NUSCENES_LABELS[sample.gt_instances_3d.labels_3d]
    sample.gt_instances.labels = NUSCENES_LABELS[sample.gt_instances.labels]
    return sample


def synthetic_batch(cfg: Config, root: Path, split: str) -> dict:
    is_kitti = cfg.train_dataloader.dataset.type == 'KittiDataset'
    dataset_cfg = (kitti_dataset_cfg if is_kitti else nuscenes_dataset_cfg)(cfg, root, split)
    dataset = DATASETS.build(dataset_cfg)
    batch = pseudo_collate([dataset[i] for i in range(BATCH_SIZE)])
    if split == 'train' and not is_kitti:
        batch['data_samples'] = [as_nuscenes_sample(sample) for sample in batch['data_samples']]
    return batch


@pytest.mark.slow
@pytest.mark.parametrize('config_path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_one_step_and_predicts(config_path: Path, synthetic_kitti: Path) -> None:
    cfg = Config.fromfile(str(config_path))
    assert cfg.default_scope == 'mmdet3d'
    init_default_scope('mmdet3d')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(narrowed(cfg.model, HEAD_CHANNELS))
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    model.train()
    data = model.data_preprocessor(synthetic_batch(cfg, synthetic_kitti, 'train'), training=True)
    assert data['inputs']['imgs'].shape[-2:] == IMAGE_SIZE
    loss, log_vars = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in log_vars.values()), log_vars
    optim_wrapper.backward(loss)
    backbone_params = {name: p for name, p in model.backbone.named_parameters() if p.requires_grad}
    missing = [name for name, p in backbone_params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f'no finite gradient for {missing}'
    first_layer = next(iter(backbone_params.values()))
    assert first_layer.grad.abs().sum() > 0
    before = first_layer.detach().clone()
    optim_wrapper.step()
    assert not torch.equal(first_layer, before)

    model.eval()
    with torch.no_grad():
        predictions = model.test_step(synthetic_batch(cfg, synthetic_kitti, 'val'))
    assert len(predictions) == BATCH_SIZE
    for prediction in predictions:
        boxes = prediction.pred_instances_3d.bboxes_3d
        assert isinstance(boxes, CameraInstance3DBoxes)
        assert torch.isfinite(boxes.tensor).all() and torch.isfinite(prediction.pred_instances_3d.scores_3d).all()
        assert len(boxes) <= cfg.model.test_cfg.max_per_img

    if cfg.train_dataloader.dataset.type == 'KittiDataset':
        # The runner test below evaluates with it; mmdet3d's own KittiMetric would need CUDA here.
        assert type(METRICS.build(cfg.val_evaluator)).__name__ == 'KittiMonoMetric'


@pytest.mark.slow
def test_kitti_config_trains_and_tests_through_the_runner(synthetic_kitti: Path, tmp_path: Path) -> None:
    from mmengine.runner import Runner

    config_path = next(p for p in CONFIGS if p.name.startswith('pgd_sparsevit') and 'cfg' not in p.stem)
    cfg = Config.fromfile(str(config_path))
    cfg.model = narrowed(cfg.model, HEAD_CHANNELS)
    cfg.model.backbone.init_cfg = None
    for split, loader in (('train', cfg.train_dataloader), ('val', cfg.test_dataloader)):
        loader.update(batch_size=BATCH_SIZE, num_workers=0, persistent_workers=False,
                      dataset=kitti_dataset_cfg(cfg, synthetic_kitti, split))
    cfg.test_evaluator.ann_file = str(synthetic_kitti / 'kitti_infos_val.pkl')
    # One epoch of one image; the test split is evaluated once, after it (the val loop is the same code).
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = None
    cfg.update(work_dir=str(tmp_path), log_level='WARNING')

    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    car_3d = [key for key in metrics if key.endswith('Car_3D_AP40_moderate_strict')]
    assert car_3d and all(0 <= value <= 100 for value in metrics.values()), metrics


def random_bev_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(x, z, size_x, size_z, ry)`` rows, close enough together to overlap often."""
    return np.concatenate([rng.uniform(-3, 3, (count, 2)), rng.uniform(0.5, 4, (count, 2)),
                           rng.uniform(-math.pi, math.pi, (count, 1))], axis=1).astype(np.float32)


CUDA_KERNEL_IN_SIMULATOR = textwrap.dedent('''
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location('rotate_iou', sys.argv[1])
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    boxes, query_boxes = np.load(sys.argv[2]), np.load(sys.argv[3])
    np.save(sys.argv[4], np.stack([kernel.rotate_iou_gpu_eval(boxes, query_boxes, criterion)
                                   for criterion in (-1, 0, 1, 2)]))
''')


def test_rotated_iou_cpu_matches_the_cuda_kernel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    boxes, query_boxes = random_bev_boxes(rng, 9), random_bev_boxes(rng, 7)
    np.save(tmp_path / 'boxes.npy', boxes)
    np.save(tmp_path / 'query_boxes.npy', query_boxes)
    kernel_file = Path(importlib.util.find_spec('mmdet3d').submodule_search_locations[0],
                       'evaluation', 'functional', 'kitti_utils', 'rotate_iou.py')
    subprocess.run([sys.executable, '-c', CUDA_KERNEL_IN_SIMULATOR, str(kernel_file), str(tmp_path / 'boxes.npy'),
                    str(tmp_path / 'query_boxes.npy'), str(tmp_path / 'kernel.npy')],
                   env=dict(os.environ, NUMBA_ENABLE_CUDASIM='1'), check=True, timeout=120)
    expected = np.load(tmp_path / 'kernel.npy')
    assert (expected[0] > 0.05).sum() >= 10, 'too few overlapping pairs to compare'
    for criterion, kernel_result in zip((-1, 0, 1, 2), expected):
        result = rotated_iou_cpu(boxes, query_boxes, criterion)
        assert result.dtype == np.float32 and result.shape == (9, 7)
        np.testing.assert_allclose(result, kernel_result, rtol=1e-4, atol=1e-5, err_msg=f'criterion {criterion}')


def test_rotated_iou_cpu_of_a_shifted_rotated_box() -> None:
    length, width, along, across, yaw = 4.0, 1.6, 0.5, 0.2, 0.3
    heading, side = np.array([math.cos(yaw), -math.sin(yaw)]), np.array([math.sin(yaw), math.cos(yaw)])
    centre = np.array([2.0, 15.0])
    shifted = centre + along * heading + across * side
    box = np.array([[*centre, length, width, yaw]])
    moved = np.array([[*shifted, length, width, yaw]])
    intersection = (length - along) * (width - across)
    np.testing.assert_allclose(rotated_iou_cpu(box, moved), [[intersection / (2 * length * width - intersection)]],
                               rtol=1e-5)
    np.testing.assert_allclose(rotated_iou_cpu(box, moved, 2), [[intersection]], rtol=1e-5)
    assert rotated_iou_cpu(box, np.zeros((0, 5))).shape == (1, 0)
    with pytest.raises(ValueError, match='criterion'):
        rotated_iou_cpu(box, moved, criterion=3)


def test_kitti_overlaps_on_cpu_stands_in_for_the_kernel_module_only_inside_its_block() -> None:
    kernel_module = 'mmdet3d.evaluation.functional.kitti_utils.rotate_iou'
    before = sys.modules.get(kernel_module)
    with kitti_overlaps_on_cpu():
        from mmdet3d.evaluation.functional.kitti_utils.rotate_iou import rotate_iou_gpu_eval
        assert rotate_iou_gpu_eval is rotated_iou_cpu
    assert sys.modules.get(kernel_module) is before


def write_car_frames(path: Path, cars: list, cam2img: np.ndarray, image_shape: tuple) -> None:
    """A KITTI info file with one easy car per frame."""
    data_list = []
    for index, car in enumerate(cars):
        corners = CameraInstance3DBoxes(torch.tensor([car])).corners
        pixels = points_cam2img(corners, torch.tensor(cam2img, dtype=torch.float32))[0]
        bbox = [*pixels.min(0).values.tolist(), *pixels.max(0).values.tolist()]
        camera = dict(img_path=f'{index:06d}.png', height=image_shape[0], width=image_shape[1],
                      cam2img=cam2img.tolist(), lidar2cam=np.eye(4).tolist())
        instance = dict(bbox=bbox, bbox_label=2, bbox_3d=car, bbox_label_3d=2, truncated=0.0, occluded=0,
                        alpha=car[6] - math.atan2(car[0], car[2]), score=0.0)
        data_list.append(dict(sample_idx=index, images=dict(CAM2=camera), instances=[instance]))
    with open(path, 'wb') as file:
        pickle.dump(dict(metainfo=dict(categories=dict(zip(KITTI_CLASSES, range(3)))), data_list=data_list), file)


def kitti_car_ap40(metric_cfg: dict, boxes: list) -> dict:
    metric = METRICS.build(metric_cfg)
    metric.dataset_meta = dict(classes=list(KITTI_CLASSES))
    for index, box in enumerate(boxes):
        # mmengine's datasets number their samples by position, and KittiMetric looks them up so.
        sample = Det3DDataSample(metainfo=dict(sample_idx=index))
        sample.pred_instances_3d = InstanceData(bboxes_3d=CameraInstance3DBoxes(torch.tensor([box])),
                                                scores_3d=torch.tensor([0.9]), labels_3d=torch.tensor([2]))
        sample.pred_instances = InstanceData()
        metric.process({}, [sample.to_dict()])
    scores = metric.evaluate(len(boxes))
    return {key.split('/Car_')[-1]: value for key, value in scores.items() if '/Car_' in key and 'AP40' in key}


def test_kitti_metric_on_cpu_scores_ground_truth_fully_and_a_shifted_box_less(tmp_path: Path) -> None:
    # KITTI's AP40 samples recall at 40 points: it reaches 100 only with more than 40 ground-truth objects.
    num_cars, length, width, along, across = 41, 4.0, 1.6, 0.5, 0.2
    cars = [[-3 + 6 * i / num_cars, 1.65, 8 + 12 * i / num_cars, length, 1.5, width, 0.3 * i / num_cars]
            for i in range(num_cars)]
    # Moved along and across its heading: the overlap is a (l - 0.5) x (w - 0.2) rectangle, IoU 4.9 / 7.9 = 0.62
    # in bird's-eye view and in 3D (same height), between KITTI's strict (0.7) and loose (0.5) car thresholds.
    shifted = [[x + along * math.cos(yaw) + across * math.sin(yaw), y,
                z - along * math.sin(yaw) + across * math.cos(yaw),
                *dims, yaw] for x, y, z, *dims, yaw in cars]
    cam2img = np.array([[721.5, 0.0, 609.6, 0.0], [0.0, 721.5, 172.9, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    write_car_frames(tmp_path / 'val.pkl', cars, cam2img, (375, 1242))
    pgd_config = next(p for p in CONFIGS if p.name.startswith('pgd_sparsevit') and 'cfg' not in p.stem)
    metric_cfg = dict(Config.fromfile(str(pgd_config)).val_evaluator, ann_file=str(tmp_path / 'val.pkl'),
                      iou_device='cpu')
    init_default_scope('mmdet3d')

    exact = kitti_car_ap40(metric_cfg, cars)
    assert len(exact) == 18 and set(exact.values()) == {100.0}, exact

    moved = kitti_car_ap40(metric_cfg, shifted)
    for kind in ('3D', 'BEV'):
        for difficulty in ('easy', 'moderate', 'hard'):
            assert moved[f'{kind}_AP40_{difficulty}_strict'] == 0.0, moved
            assert moved[f'{kind}_AP40_{difficulty}_loose'] == 100.0, moved


class FirstSamples:
    """Stands in for a dataset built with ``indices=n``: its first n samples."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def get_data_info(self, index: int) -> dict:
        return dict(sample_idx=index)


def test_kitti_metric_of_a_subset_scores_like_an_annotation_file_of_the_subset(tmp_path: Path) -> None:
    from plugin.search.evaluation import restrict_metrics_to_samples
    cars = [[-3 + 6 * i / 30, 1.65, 8 + 12 * i / 30, 4.0, 1.5, 1.6, 0.3 * i / 30] for i in range(30)]
    cam2img = np.array([[721.5, 0.0, 609.6, 0.0], [0.0, 721.5, 172.9, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    write_car_frames(tmp_path / 'all.pkl', cars, cam2img, (375, 1242))
    write_car_frames(tmp_path / 'first.pkl', cars[:12], cam2img, (375, 1242))
    pgd_config = next(p for p in CONFIGS if p.name.startswith('pgd_sparsevit') and 'cfg' not in p.stem)
    metric_cfg = dict(Config.fromfile(str(pgd_config)).val_evaluator, iou_device='cpu')
    init_default_scope('mmdet3d')
    # mmdet3d's KittiMetric expects one prediction per frame of its ann_file; the subset's file holds its 12.
    restricted = METRICS.build(dict(metric_cfg, ann_file=str(tmp_path / 'all.pkl')))
    restrict_metrics_to_samples([restricted], FirstSamples(12), tmp_path)
    subset_scores = kitti_car_ap40(dict(metric_cfg, ann_file=restricted.ann_file), cars[:12])
    assert subset_scores == kitti_car_ap40(dict(metric_cfg, ann_file=str(tmp_path / 'first.pkl')), cars[:12])
    assert set(subset_scores.values()) != {0.0}


def test_kitti_metric_rejects_an_unknown_iou_device() -> None:
    init_default_scope('mmdet3d')
    with pytest.raises(ValueError, match='iou_device'):
        METRICS.build(dict(type='KittiMonoMetric', ann_file='unused.pkl', iou_device='gpu'))
