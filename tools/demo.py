"""The main job: the whole project on data it makes itself, through the mmdet/mmseg runners.

1. writes the synthetic COCO-style and ADE20K-style datasets (plugin/demo_data/synthetic.py);
2. trains and evaluates Mask R-CNN with a small SparseViT-Swin (mmdet's runner, CocoMetric);
3. trains and evaluates Semantic FPN with a small EfficientFormer (mmseg's runner, IoUMetric);
4. adapts the detector to sparsity (SparsityAwareAdaptationHook) and evaluates it at several
   pruning ratios, with the backbone's latency and speedup;
5. prints one table and saves it (results.md, results.json) with pictures of predictions and
   kept windows, all under --work-dir.

    python tools/demo.py             # the full demo (`make demo`), about 15 minutes on 2 cores
    python tools/demo.py --quick     # a smoke run on tiny data with a few iterations (the tests use it)
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import mmcv
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from plugin.demo_data import make_demo_data
from plugin.utils import markdown_table, median_latency_ms
from plugin.utils.cli import HelpFormatter
from plugin.visualization.windows import draw_kept_windows, kept_window_masks, prediction_picture

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs/demo'
DET_CONFIG = CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_demo-shapes.py'
SAA_CONFIG = CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py'
SEG_CONFIG = CONFIG_DIR / 'fpn_efficientformer-l1_demo-shapes.py'
EVAL_RATIOS = (0.0, 0.3, 0.5, 0.7)
PICTURE_RATIO = 0.5
NUM_PICTURES = 3
# Backbone latency is measured at the paper's detection size, where window sparsity pays.
LATENCY_SIZE = (672, 672)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoints, table and pictures')
    parser.add_argument('--data-dir', default='data/demo', help='where the synthetic datasets are written')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quick', action='store_true',
                        help='tiny data and a few iterations: checks the pipeline, not the accuracy')
    return parser.parse_args(argv)


def stage_ratios(ratio: float, depths: Sequence[int]) -> List[List[float]]:
    """``ratio`` in every stage but the last, which is a single window at the demo's image size."""
    return [[ratio] * depth for depth in depths[:-1]] + [[0.0] * depths[-1]]


def demo_config(path: Path, args: argparse.Namespace, work_dir: Path) -> Config:
    """The config at ``path`` pointed at this run's data and work dir (shortened with --quick)."""
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=args.seed)
    task = 'coco' if cfg.default_scope == 'mmdet' else 'ade'
    data_root = Path(args.data_dir).resolve() / task
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if 'ann_file' in cfg[evaluator]:
            cfg[evaluator].ann_file = str(data_root / 'annotations/instances_val.json')
    if args.quick:
        iters = 4
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
        cfg.default_hooks.checkpoint.interval = iters
        cfg.default_hooks.logger.interval = 2
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=iters)]
    return cfg


def backbone_latency(backbone: torch.nn.Module) -> float:
    """Median batch-1 latency in ms at LATENCY_SIZE (the backbone is left in eval mode)."""
    backbone.eval()
    image = torch.randn(1, 3, *LATENCY_SIZE)
    return median_latency_ms(lambda: backbone(image), warmup=2, repeats=5)


def result_row(task: str, backbone: str, ratio, metrics: Dict[str, float], latency=None, speedup=None) -> dict:
    def metric(key: str, scale: float = 1.0):
        return float(metrics[key]) / scale if key in metrics else '-'

    return {'task': task, 'backbone': backbone, 'pruning ratio': ratio,
            'bbox AP': metric('coco/bbox_mAP'), 'segm AP': metric('coco/segm_mAP'), 'mIoU': metric('mIoU', 100),
            f'backbone ms ({LATENCY_SIZE[0]}px)': '-' if latency is None else latency,
            'speedup': '-' if speedup is None else speedup}


def save_pictures(runner: Runner, cfg: Config, out_dir: Path, name: str, with_windows: bool) -> List[Path]:
    """Predictions on the first validation images, with the kept windows per stage when ``with_windows``."""
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import inference_detector as inference
    else:
        from mmseg.apis import inference_model as inference
    model = runner.model
    model.cfg = cfg
    dataset = runner.test_dataloader.dataset
    paths = []
    for index in range(min(NUM_PICTURES, len(dataset))):
        image_path = dataset.get_data_info(index)['img_path']
        with DefaultScope.overwrite_default_scope(cfg.default_scope):
            sample = inference(model, image_path)
        image = mmcv.imread(image_path, channel_order='rgb')
        picture = prediction_picture(cfg.visualizer, dataset.metainfo, image, sample)
        paths.append(out_dir / f'{name}_{index}.png')
        if with_windows:
            panels = kept_window_masks(model.backbone, sample.metainfo['batch_input_shape'])
            draw_kept_windows(image, panels, sample.metainfo['img_shape'], picture).savefig(paths[-1])
        else:
            mmcv.imwrite(picture[..., ::-1], str(paths[-1]))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    counts = dict(num_train=24, num_val=8) if args.quick else dict(num_train=300, num_val=50)

    print('[demo] 1/5 writing the synthetic datasets to', args.data_dir)
    make_demo_data(args.data_dir, seed=args.seed, image_size=(160, 160), tasks=('coco', 'ade'), **counts)

    print('[demo] 2/5 Mask R-CNN + SparseViT-Swin: evaluate untrained, train, evaluate')
    det_cfg = demo_config(DET_CONFIG, args, work_dir / 'det')
    det_runner = Runner.from_cfg(det_cfg)
    det_untrained = det_runner.test()
    det_runner.train()
    det_trained = det_runner.test()
    det_checkpoint = work_dir / 'det' / f'iter_{det_cfg.train_cfg.max_iters}.pth'

    print('[demo] 3/5 Semantic FPN + EfficientFormer: evaluate untrained, train, evaluate')
    seg_cfg = demo_config(SEG_CONFIG, args, work_dir / 'seg')
    seg_runner = Runner.from_cfg(seg_cfg)
    seg_untrained = seg_runner.test()
    seg_runner.train()
    seg_trained = seg_runner.test()
    seg_latency = backbone_latency(seg_runner.model.backbone)

    print('[demo] 4/5 sparsity-aware adaptation, then evaluation at pruning ratios', EVAL_RATIOS)
    saa_cfg = demo_config(SAA_CONFIG, args, work_dir / 'saa')
    saa_cfg.load_from = str(det_checkpoint)
    saa_runner = Runner.from_cfg(saa_cfg)
    saa_runner.train()
    backbone = saa_runner.model.backbone
    rows = [result_row('detection', 'SparseViT-Swin, untrained', 0.0, det_untrained),
            result_row('detection', 'SparseViT-Swin, dense training', 0.0, det_trained)]
    dense_ms = None
    for ratio in EVAL_RATIOS:
        backbone.set_pruning_ratios(stage_ratios(ratio, backbone.depths))
        metrics = saa_runner.test()
        latency = backbone_latency(backbone)
        dense_ms = dense_ms or latency
        rows.append(result_row('detection', 'SparseViT-Swin, adapted', ratio, metrics, latency, dense_ms / latency))
    rows += [result_row('segmentation', 'EfficientFormer-L1, untrained', '-', seg_untrained),
             result_row('segmentation', 'EfficientFormer-L1, trained', '-', seg_trained, seg_latency)]

    print('[demo] 5/5 pictures and results')
    backbone.set_pruning_ratios(stage_ratios(PICTURE_RATIO, backbone.depths))
    pictures = save_pictures(saa_runner, saa_cfg, work_dir, 'detection_windows', with_windows=True)
    pictures += save_pictures(seg_runner, seg_cfg, work_dir, 'segmentation', with_windows=False)
    table = markdown_table(rows, float_format='.3f')
    (work_dir / 'results.md').write_text(table + '\n')
    (work_dir / 'results.json').write_text(json.dumps(rows, indent=1))
    print(table)
    print('[demo] pictures:', *map(str, pictures), sep='\n  ')
    return rows


if __name__ == '__main__':
    main()
