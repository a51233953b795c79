"""Tiny detection and segmentation configs on the synthetic shapes, shared by the runner-level tests.

Each is a real config of configs/sparsevit/ (its sparsity-aware adaptation variant) with toy widths
and images, a few CPU iterations, one validation at the end and one checkpoint.
"""
from pathlib import Path

from mmengine.config import Config

from plugin.demo_data.synthetic import SHAPE_CLASSES, SHAPE_PALETTE

REPO_ROOT = Path(__file__).resolve().parents[1]
SPARSEVIT_CONFIGS = REPO_ROOT / 'configs' / 'sparsevit'
DET_SAA_CONFIG = SPARSEVIT_CONFIGS / 'mask-rcnn_sparsevit-swin-t-p4-w7_fpn_saa_amp-ms-crop-1x_coco-672.py'
SEG_SAA_CONFIG = SPARSEVIT_CONFIGS / 'fpn_sparsevit-swin-t-p4-w7_saa_4xb4-40k_ade20k-512x512.py'
TINY_BACKBONE = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.)
IMAGE_SIZE = (64, 64)
TRAIN_ITERS = 4


def tiny_detection_cfg(data_root: Path, work_dir: Path) -> Config:
    """The detection SAA config at toy sizes, on the synthetic shapes."""
    cfg = Config.fromfile(str(DET_SAA_CONFIG))
    cfg.model.backbone.update(TINY_BACKBONE, convert_weights=False, init_cfg=None)
    cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=16)
    cfg.model.rpn_head.update(in_channels=16, feat_channels=16)
    roi_head = cfg.model.roi_head
    roi_head.bbox_roi_extractor.out_channels = roi_head.mask_roi_extractor.out_channels = 16
    roi_head.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=len(SHAPE_CLASSES))
    roi_head.mask_head.update(in_channels=16, conv_out_channels=16, num_classes=len(SHAPE_CLASSES))
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    cfg.model.train_cfg.rcnn.sampler.num = 32
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    metainfo = dict(classes=SHAPE_CLASSES, palette=SHAPE_PALETTE)
    train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='Resize', scale=IMAGE_SIZE, keep_ratio=True), dict(type='PackDetInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=IMAGE_SIZE, keep_ratio=True),
                     dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                     dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                           'scale_factor'))]
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CocoDataset', data_root=str(data_root), metainfo=metainfo,
                     ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                     filter_cfg=dict(filter_empty_gt=True), pipeline=train_pipeline))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(type='CocoDataset', data_root=str(data_root), metainfo=metainfo, test_mode=True,
                     ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                     pipeline=test_pipeline))
    cfg.val_evaluator = cfg.test_evaluator = dict(
        type='CocoMetric', ann_file=str(data_root / 'annotations/instances_val.json'), metric=['bbox', 'segm'])
    return runner_settings(cfg, work_dir)


def tiny_segmentation_cfg(data_root: Path, work_dir: Path) -> Config:
    """The Semantic FPN SAA config at toy sizes, on the synthetic shapes."""
    cfg = Config.fromfile(str(SEG_SAA_CONFIG))
    cfg.model.backbone.update(TINY_BACKBONE, arch=None, convert_weights=False, init_cfg=None)
    cfg.model.data_preprocessor.size = IMAGE_SIZE
    cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=16)
    cfg.model.decode_head.update(in_channels=[16] * 4, channels=16, num_classes=len(SHAPE_CLASSES),
                                 norm_cfg=dict(type='BN', requires_grad=True))
    metainfo = dict(classes=SHAPE_CLASSES, palette=SHAPE_PALETTE)
    train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                      dict(type='Resize', scale=IMAGE_SIZE, keep_ratio=True), dict(type='PackSegInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=IMAGE_SIZE, keep_ratio=True),
                     dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]

    def dataset(split: str, pipeline: list) -> dict:
        return dict(type='BaseSegDataset', data_root=str(data_root), metainfo=metainfo, img_suffix='.jpg',
                    seg_map_suffix='.png', reduce_zero_label=True, pipeline=pipeline,
                    data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'))

    cfg.train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                sampler=dict(type='InfiniteSampler', shuffle=True),
                                dataset=dataset('training', train_pipeline))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dataset('validation', test_pipeline))
    return runner_settings(cfg, work_dir)


def runner_settings(cfg: Config, work_dir: Path, iters: int = TRAIN_ITERS, checkpoint_interval: int = TRAIN_ITERS
                    ) -> Config:
    """``iters`` CPU iterations with one validation at the end and a checkpoint every ``checkpoint_interval``."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=iters)]
    cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=checkpoint_interval)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.load_from = None
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    return cfg
