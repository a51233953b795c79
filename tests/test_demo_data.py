"""The synthetic demo data: readable by the real mmdet / mmseg / mmdet3d datasets, self-consistent, reproducible."""
import hashlib
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from plugin.demo_data.synthetic import (
    CUBOID_HUE_RANGES,
    KITTI_CLASSES,
    MONO3D_CLASSES,
    SEMANTIC_CLASSES,
    SEMANTIC_PALETTE,
    SHAPE_CLASSES,
    make_demo_data,
    render_shape_scene,
    scene_rng,
)

DEMO_SEG_CONFIG = Path(__file__).resolve().parents[1] / 'configs/demo/fpn_efficientformerv2-s0_demo-shapes.py'

IMAGE_SIZE = (96, 128)
MONO3D_IMAGE_SIZE = (96, 320)
NUM_TRAIN, NUM_VAL = 4, 2


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('demo_data')
    make_demo_data(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE,
                   mono3d_image_size=MONO3D_IMAGE_SIZE)
    return root


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob('*')) if path.is_file()}


def _tight_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]


def test_coco_annotations_are_consistent(demo_root: Path) -> None:
    for split, count in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        coco = json.loads((demo_root / 'coco' / 'annotations' / f'instances_{split}.json').read_text())
        assert [(c['id'], c['name']) for c in coco['categories']] == list(enumerate(SHAPE_CLASSES, start=1))
        assert [image['id'] for image in coco['images']] == list(range(1, count + 1))
        assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations']) > 0
        for image in coco['images']:
            assert cv2.imread(str(demo_root / 'coco' / split / image['file_name'])).shape == (*IMAGE_SIZE, 3)
            annotations = [a for a in coco['annotations'] if a['image_id'] == image['id']]
            masks = [mask_utils.decode(a['segmentation']).astype(bool) for a in annotations]
            for annotation, mask in zip(annotations, masks):
                assert mask.shape == IMAGE_SIZE and annotation['iscrowd'] == 0
                assert 1 <= annotation['category_id'] <= len(SHAPE_CLASSES)
                np.testing.assert_allclose(annotation['bbox'], _tight_box(mask), atol=1)
                assert annotation['area'] == mask.sum()
            # occluded parts belong only to the shape painted on top
            if masks:
                assert np.stack(masks).sum(axis=0).max() == 1


def test_coco_masks_cover_the_painted_shapes(demo_root: Path) -> None:
    coco = json.loads((demo_root / 'coco' / 'annotations' / 'instances_train.json').read_text())
    files = {image['id']: image['file_name'] for image in coco['images']}
    square = np.ones((3, 3), np.uint8)
    contrasts = []
    for annotation in coco['annotations']:
        image = cv2.imread(str(demo_root / 'coco' / 'train' / files[annotation['image_id']])).astype(np.float64)
        mask = mask_utils.decode(annotation['segmentation'])
        inner_edge = mask.astype(bool) & ~cv2.erode(mask, square).astype(bool)
        outer_edge = cv2.dilate(mask, square).astype(bool) & ~mask.astype(bool)
        contrasts.append(np.linalg.norm(image[inner_edge].mean(axis=0) - image[outer_edge].mean(axis=0)))
    # the colour changes right at each mask's edge; a mask off by one pixel measures about 49 here, exact ones 75
    assert np.median(contrasts) > 60


def test_shape_scenes_vary_and_occlude() -> None:
    scenes = [render_shape_scene(scene_rng(7, 'coco', 'train', i), 64, 64) for i in range(40)]
    labels = [label for scene in scenes for label in scene.labels]
    assert set(labels) == set(range(len(SHAPE_CLASSES)))
    assert np.mean([len(scene.labels) for scene in scenes]) >= 2
    areas = [mask.sum() for scene in scenes for mask in scene.masks]
    assert max(areas) > 4 * min(areas)
    boxes = [[_tight_box(mask) for mask in scene.masks] for scene in scenes]
    overlapping = sum(1 for scene_boxes in boxes for i, (x, y, w, h) in enumerate(scene_boxes)
                      for (u, v, p, q) in scene_boxes[i + 1:] if x < u + p and u < x + w and y < v + q and v < y + h)
    assert overlapping > 0
    assert len({scene.image.reshape(-1, 3).mean(axis=0).round().tobytes() for scene in scenes}) == len(scenes)


def _detail(image: np.ndarray) -> np.ndarray:
    """Per pixel, the absolute Laplacian of the grey image: how much fine texture is there."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return np.abs(cv2.Laplacian(grey, cv2.CV_64F))


def test_objects_carry_texture_and_backgrounds_are_mostly_smooth() -> None:
    scenes = [render_shape_scene(scene_rng(5, 'coco', 'train', i), 128, 128) for i in range(24)]
    square = np.ones((5, 5), np.uint8)
    inside, outside = [], []
    for scene in scenes:
        detail = _detail(scene.image)
        objects = np.any(scene.masks, axis=0).astype(np.uint8)
        # away from the objects' edges, which are detail of their own
        inner = np.stack([cv2.erode(m.astype(np.uint8), square) for m in scene.masks]).any(axis=0)
        background = ~cv2.dilate(objects, square).astype(bool)
        inside.append(np.median(detail[inner]))
        outside.append(np.median(detail[background]))
    # the typical object pixel has several times the fine detail of the typical background pixel
    assert np.median(inside) > 4 * np.median(outside)
    assert min(inside) > max(np.median(outside), 1.0)


def test_coco_loads_with_mmdet_coco_dataset(demo_root: Path) -> None:
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs

    dataset = CocoDataset(
        data_root=str(demo_root / 'coco'), ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
        metainfo=dict(classes=SHAPE_CLASSES), filter_cfg=None,
        pipeline=[LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True), PackDetInputs()])
    assert len(dataset) == NUM_TRAIN
    sample = dataset[0]
    assert tuple(sample['inputs'].shape) == (3, *IMAGE_SIZE)
    instances = sample['data_samples'].gt_instances
    assert len(instances) > 0 and instances.labels.max() < len(SHAPE_CLASSES)
    masks = instances.masks.to_ndarray().astype(bool)
    for box, mask in zip(instances.bboxes.numpy(), masks):
        x, y, w, h = _tight_box(mask)
        np.testing.assert_allclose(box, [x, y, x + w, y + h], atol=1)


def test_coco_metric_scores_the_ground_truth_as_perfect(demo_root: Path) -> None:
    import torch
    from mmdet.evaluation import CocoMetric

    ann_file = demo_root / 'coco' / 'annotations' / 'instances_val.json'
    coco = json.loads(ann_file.read_text())
    metric = CocoMetric(ann_file=str(ann_file), metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=SHAPE_CLASSES)
    for image in coco['images']:
        annotations = [a for a in coco['annotations'] if a['image_id'] == image['id']]
        masks = np.stack([mask_utils.decode(a['segmentation']) for a in annotations]).astype(bool)
        # boxes from the masks, not from the file: COCO's own evaluation then checks the file's boxes against them
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in map(_tight_box, masks)], dtype=torch.float32)
        masks = torch.from_numpy(masks)
        prediction = dict(bboxes=boxes, scores=torch.ones(len(annotations)), masks=masks,
                          labels=torch.tensor([a['category_id'] - 1 for a in annotations]))
        metric.process({}, [dict(img_id=image['id'], ori_shape=IMAGE_SIZE, pred_instances=prediction)])
    results = metric.evaluate(len(coco['images']))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0) and results['coco/segm_mAP'] == pytest.approx(1.0)


def test_ade_loads_with_mmseg_dataset_with_background_as_a_class(demo_root: Path) -> None:
    from mmcv.transforms import LoadImageFromFile
    from mmengine.config import Config
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs

    # the demo's segmentation config reads the labels as written, with the same class list and colours
    demo_cfg = Config.fromfile(str(DEMO_SEG_CONFIG))
    assert tuple(demo_cfg.metainfo.classes) == SEMANTIC_CLASSES
    assert [tuple(colour) for colour in demo_cfg.metainfo.palette] == SEMANTIC_PALETTE
    assert demo_cfg.model.decode_head.num_classes == len(SEMANTIC_CLASSES)
    assert not demo_cfg.train_dataloader.dataset.reduce_zero_label
    dataset = BaseSegDataset(
        data_root=str(demo_root / 'ade'),
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False,
        metainfo=dict(classes=SEMANTIC_CLASSES, palette=SEMANTIC_PALETTE),
        pipeline=[LoadImageFromFile(), LoadAnnotations(reduce_zero_label=False), PackSegInputs()])
    assert len(dataset) == NUM_VAL
    for index in range(len(dataset)):
        raw = cv2.imread(dataset.get_data_info(index)['seg_map_path'], cv2.IMREAD_UNCHANGED)
        assert raw.shape == IMAGE_SIZE and raw.max() < len(SEMANTIC_CLASSES)
        sample = dataset[index]
        assert tuple(sample['inputs'].shape) == (3, *IMAGE_SIZE)
        labels = sample['data_samples'].gt_sem_seg.data.numpy()[0]
        # no pixel is ignored: the background (0) is trained and scored like the shapes (1 to 4)
        np.testing.assert_array_equal(labels, raw)
        assert (labels == 0).any() and (labels > 0).any()


def test_ade_files_pair_each_image_with_its_labels(demo_root: Path) -> None:
    for index in range(NUM_VAL):
        scene = render_shape_scene(scene_rng(0, 'ade', 'val', index), *IMAGE_SIZE)
        name = f'ADE_val_{index:08d}'
        labels = cv2.imread(str(demo_root / 'ade' / 'annotations' / 'validation' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        expected = np.zeros(IMAGE_SIZE, np.uint8)
        for mask, label in zip(scene.masks, scene.labels):
            expected[mask] = label + 1
        np.testing.assert_array_equal(labels, expected)
        image = cv2.imread(str(demo_root / 'ade' / 'images' / 'validation' / f'{name}.jpg'))[..., ::-1]
        # the same picture, up to the JPEG loss of its grain
        assert np.abs(image.astype(np.float64) - scene.image).mean() < 10


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    sizes = dict(num_train=2, num_val=1, image_size=(64, 64), mono3d_image_size=(64, 192))
    for name, seed in (('first', 3), ('second', 3), ('other_seed', 4)):
        make_demo_data(tmp_path / name, seed=seed, **sizes)
    make_demo_data(tmp_path / 'coco_only', seed=3, tasks=['coco'], **sizes)
    first, second, other = (_file_hashes(tmp_path / name) for name in ('first', 'second', 'other_seed'))
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[path] != other[path] for path in first if not path.endswith('.txt'))
    coco_only = _file_hashes(tmp_path / 'coco_only')
    assert coco_only == {path: digest for path, digest in first.items() if path.startswith('coco')}


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='unknown tasks'):
        make_demo_data(tmp_path, tasks=['coco', 'cityscapes'])
    with pytest.raises(ValueError, match='>= 32'):
        make_demo_data(tmp_path, image_size=(16, 64), tasks=['ade'])
    with pytest.raises(ValueError, match='at least 1'):
        make_demo_data(tmp_path, num_val=0, tasks=['coco'])
    with pytest.raises(ValueError, match='mono3d_image_size'):
        make_demo_data(tmp_path, mono3d_image_size=(64,))
    assert not any(tmp_path.iterdir())


def test_mono3d_info_file_format(demo_root: Path) -> None:
    root = demo_root / 'kitti_mono'
    infos = {split: pickle.loads((root / f'kitti_infos_{split}.pkl').read_bytes()) for split in ('train', 'val')}
    assert infos['train']['metainfo']['categories'] == {name: i for i, name in enumerate(KITTI_CLASSES)}
    sample_indices = [info['sample_idx'] for split in ('train', 'val') for info in infos[split]['data_list']]
    assert sample_indices == list(range(NUM_TRAIN + NUM_VAL))
    for info in infos['train']['data_list'] + infos['val']['data_list']:
        camera = info['images']['CAM2']
        assert cv2.imread(str(root / 'training' / 'image_2' / camera['img_path'])).shape == (*MONO3D_IMAGE_SIZE, 3)
        assert (camera['height'], camera['width']) == MONO3D_IMAGE_SIZE
        assert np.array(camera['cam2img']).shape == (4, 4) and np.array(camera['lidar2cam']).shape == (4, 4)
        np.testing.assert_allclose(camera['lidar2img'], np.array(camera['cam2img']) @ np.array(camera['lidar2cam']))
        assert len(info['instances']) == len(info['cam_instances']['CAM2']) > 0
        for instance in info['instances']:
            assert KITTI_CLASSES[instance['bbox_label']] in MONO3D_CLASSES
            assert instance['bbox_label_3d'] == instance['bbox_label'] and len(instance['bbox_3d']) == 7
            assert instance['occluded'] in (0, 1, 2) and 0 <= instance['truncated'] < 1
            assert instance['difficulty'] in (-1, 0, 1, 2)


def test_mono3d_loads_with_mmdet3d_kitti_dataset(demo_root: Path) -> None:
    pytest.importorskip('mmdet3d')
    from mmdet3d.datasets import KittiDataset
    from mmdet3d.datasets.transforms import LoadAnnotations3D, LoadImageFromFileMono3D, Pack3DDetInputs
    from mmdet3d.structures import CameraInstance3DBoxes, points_cam2img

    dataset = KittiDataset(
        data_root=str(demo_root / 'kitti_mono'), ann_file='kitti_infos_train.pkl',
        data_prefix=dict(img='training/image_2'), metainfo=dict(classes=MONO3D_CLASSES),
        modality=dict(use_lidar=False, use_camera=True), load_type='fov_image_based', box_type_3d='Camera',
        pipeline=[LoadImageFromFileMono3D(),
                  LoadAnnotations3D(with_bbox=True, with_label=True, with_bbox_3d=True, with_label_3d=True,
                                    with_bbox_depth=True),
                  Pack3DDetInputs(keys=['img', 'gt_bboxes', 'gt_bboxes_labels', 'gt_bboxes_3d', 'gt_labels_3d',
                                        'centers_2d', 'depths'])])
    assert len(dataset) == NUM_TRAIN
    infos = pickle.loads((demo_root / 'kitti_mono' / 'kitti_infos_train.pkl').read_bytes())['data_list']
    height, width = MONO3D_IMAGE_SIZE
    for index in range(len(dataset)):
        sample = dataset[index]
        assert tuple(sample['inputs']['img'].shape) == (3, height, width)
        data_sample = sample['data_samples']
        boxes_3d = data_sample.gt_instances_3d.bboxes_3d
        assert isinstance(boxes_3d, CameraInstance3DBoxes) and len(boxes_3d) > 0
        boxes_2d = data_sample.gt_instances.bboxes.numpy()
        cam2img = np.array(data_sample.cam2img)
        centres = points_cam2img(boxes_3d.gravity_center, cam2img).numpy()
        assert np.all((boxes_2d[:, :2] <= centres) & (centres <= boxes_2d[:, 2:]))
        np.testing.assert_allclose(data_sample.gt_instances_3d.centers_2d.numpy(), centres, atol=1e-3)
        np.testing.assert_allclose(data_sample.gt_instances_3d.depths.numpy(),
                                   boxes_3d.gravity_center[:, 2].numpy(), atol=1e-4)
        # mmdet3d's own corners must project onto the stored 2D box: same yaw and origin convention
        corners = points_cam2img(boxes_3d.corners.reshape(-1, 3), cam2img).numpy().reshape(-1, 8, 2)
        projected = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        clipped = np.clip(projected, 0, [width, height, width, height])
        np.testing.assert_allclose(boxes_2d, clipped, atol=0.5)
        hsv = cv2.cvtColor(sample['inputs']['img'].permute(1, 2, 0).numpy(), cv2.COLOR_BGR2HSV_FULL) / 255.0
        instances = infos[index]['instances']  # the frame-based records carry occlusion and truncation
        for instance, label, (x1, y1, x2, y2) in zip(instances, data_sample.gt_instances.labels.numpy(),
                                                     boxes_2d.round().astype(int)):
            if instance['occluded'] == 0 and instance['truncated'] == 0:
                # the box shows the cuboid of its own class: enough pixels of that class's hue band
                low, high = CUBOID_HUE_RANGES[MONO3D_CLASSES[label]]
                patch = hsv[y1:y2, x1:x2].reshape(-1, 3)
                assert np.mean((patch[:, 0] >= low - 0.01) & (patch[:, 0] <= high + 0.01) & (patch[:, 1] > 0.4)) > 0.3
