"""The main job: the whole project on data it makes itself, through the mmdet/mmseg runners.

1. writes the seeded synthetic datasets: textured shapes on out-of-focus photographs, as COCO instances
   and ADE20K-style labels with a background class (plugin/demo_data/synthetic.py);
2. trains and evaluates Mask R-CNN with a small SparseViT-Swin, dense (mmdet's runner, CocoMetric);
3. trains and evaluates Semantic FPN with EfficientFormerV2-S0 (mmseg's runner, IoUMetric);
4. adapts the detector to sparsity (SparsityAwareAdaptationHook) with the paper's L2 window scorer and
5. from the same checkpoint, with the same schedule, with the learned window scorer; evaluates both at
   several pruning ratios: AP, the share of the ground-truth object pixels that lie in the kept windows
   of each stage (object coverage, ObjectCoverageHook) and the backbone's latency;
6. writes the tables (results.md, results.json) and pictures under --work-dir.

Every runner is seeded and runs torch's deterministic algorithms: the same seed gives the same table on
the same machine with the same number of threads, the latencies aside.

The terminal shows a line per step, a progress bar per training run and test, the tables, and where the
pictures and logs are; what the libraries print (mmengine's runner logs among it) goes to --work-dir's
demo.log, and each runner also writes its own mmengine log under its work dir (det/, seg/, adapt_*/).

    python tools/demo.py             # the full demo (`make demo`), under 20 minutes on 2 CPU cores
    python tools/demo.py --quick     # a smoke run on tiny data with a few iterations (the tests use it)
"""
import argparse
import contextlib
import functools
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import matplotlib.pyplot as plt
import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from tqdm import tqdm

from plugin.demo_data import make_demo_data
from plugin.models.utils.records import ForwardRecord, recording
from plugin.utils import alternating_latency_ms, markdown_table, median_latency_ms
from plugin.utils.cli import HelpFormatter, run_tool
from plugin.utils.package_data import CONFIG_ROOT
from plugin.visualization import (
    WindowPictureRow,
    draw_kept_window_rows,
    draw_segmentation,
    kept_window_masks,
    prediction_picture,
)

CONFIG_DIR = CONFIG_ROOT / 'demo'
DET_CONFIG = CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_demo-shapes.py'
SEG_CONFIG = CONFIG_DIR / 'fpn_efficientformerv2-s0_demo-shapes.py'
SCORER_CONFIGS = {'L2': CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_saa_demo-shapes.py',
                  'learned': CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_learned-scorer_saa_demo-shapes.py'}
SEG_MODEL = 'EfficientFormerV2-S0'
EVAL_RATIOS = (0.0, 0.3, 0.5, 0.7)
PICTURE_RATIO = 0.5
# The detector before adaptation is tested dense and at PICTURE_RATIO with the L2 scorer, which it has.
UNADAPTED_RATIOS = (0.0, PICTURE_RATIO)
# Predictions drawn in the pictures: Mask R-CNN proposes several classes per object at lower scores.
PICTURE_SCORE_THRESHOLD = 0.5
NUM_PICTURES = 3
IMAGE_SIZE = (160, 160)
DATA_COUNTS = dict(num_train=300, num_val=50)
QUICK_DATA_COUNTS = dict(num_train=24, num_val=8)
QUICK_ITERS = 4
# Backbone latency is measured at the paper's detection size, where window sparsity pays.
LATENCY_SIZE = (672, 672)
# Untimed and timed passes per latency; --quick checks the pipeline, not the numbers, so it times fewer.
LATENCY_PASSES = (3, 11)
QUICK_LATENCY_PASSES = (1, 3)
NUM_STEPS = 6
# The runners' work dirs under --work-dir, each with its mmengine log.
RUN_DIRS = ('det', 'seg', *(f'adapt_{scorer.lower()}' for scorer in SCORER_CONFIGS))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoints, tables and pictures')
    parser.add_argument('--data-dir', default='data/demo', help='where the synthetic datasets are written')
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of every runner')
    parser.add_argument('--quick', action='store_true',
                        help='tiny data, a few iterations and latency passes: checks the pipeline, not the numbers')
    return parser.parse_args(argv)


def stage_ratios(ratio: float, depths: Sequence[int]) -> list[float]:
    """One ratio per stage (the backbone gives it to each block): ``ratio`` in every stage but the last,
    which is a single window at the demo's image size."""
    return [ratio] * (len(depths) - 1) + [0.0]


def demo_config(path: Path, args: argparse.Namespace, work_dir: Path) -> Config:
    """The config at ``path`` pointed at this run's data and work dir, seeded (shortened with --quick)."""
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=args.seed, deterministic=True)
    task = 'coco' if cfg.default_scope == 'mmdet' else 'ade'
    data_root = Path(args.data_dir).resolve() / task
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if 'ann_file' in cfg[evaluator]:
            cfg[evaluator].ann_file = str(data_root / 'annotations/instances_val.json')
    # the demo tests every model itself; the runner's validation at the end of training would repeat that test
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.quick:
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = QUICK_ITERS
        cfg.default_hooks.checkpoint.interval = QUICK_ITERS
        cfg.default_hooks.logger.interval = 2
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=QUICK_ITERS)]
    # the log goes to a file (demo_step); a bar shows each training run and test on the terminal
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='ProgressBarHook')]
    return cfg


def latency_passes(args: argparse.Namespace) -> tuple[int, int]:
    return QUICK_LATENCY_PASSES if args.quick else LATENCY_PASSES


def backbone_latency(backbone: torch.nn.Module, passes: tuple[int, int] = LATENCY_PASSES) -> float:
    """Median batch-1 latency in ms at LATENCY_SIZE (the backbone is left in eval mode)."""
    backbone.eval()
    image = torch.randn(1, 3, *LATENCY_SIZE)
    return median_latency_ms(lambda: backbone(image), warmup=passes[0], repeats=passes[1])


def latency_at_ratios(backbone: torch.nn.Module, ratios: Sequence[float],
                      passes: tuple[int, int] = LATENCY_PASSES) -> list[float]:
    """Median batch-1 latency in ms at LATENCY_SIZE at each pruning ratio, the ratios timed in alternation so
    that a change of the machine's load hits all of them alike (one after another, a quiet 2-core machine
    once timed ratio 0.5 slower than 0.3)."""
    backbone.eval()
    image = torch.randn(1, 3, *LATENCY_SIZE)

    def run_at(ratio: float):
        # setting the ratios costs microseconds of a ~100 ms pass
        return lambda: (backbone.set_pruning_ratios(stage_ratios(ratio, backbone.depths)), backbone(image))

    return alternating_latency_ms([run_at(ratio) for ratio in ratios], warmup=passes[0], repeats=passes[1])


def _metric(metrics: dict[str, float], key: str, scale: float = 1.0):
    return float(metrics[key]) / scale if key in metrics else '-'


def detection_row(model: str, scorer: str, ratio: float, metrics: dict[str, float], pruned_stages: int,
                  latency: float | None = None, speedup: float | None = None) -> dict:
    row = {'model': model, 'scorer': scorer, 'pruning ratio': ratio,
           'bbox AP': _metric(metrics, 'coco/bbox_mAP'), 'segm AP': _metric(metrics, 'coco/segm_mAP')}
    for kind, key in (('coverage', 'coverage'), ('kept area', 'kept_area')):
        row.update({f'{kind} s{stage}': _metric(metrics, f'{key}/stage{stage}')
                    for stage in range(1, pruned_stages + 1)})
    row[f'backbone ms ({LATENCY_SIZE[0]}px)'] = '-' if latency is None else latency
    row['speedup'] = '-' if speedup is None else speedup
    return row


def segmentation_row(model: str, metrics: dict[str, float], latency: float | None = None) -> dict:
    return {'model': model, 'mIoU': _metric(metrics, 'mIoU', 100), 'pixel accuracy': _metric(metrics, 'aAcc', 100),
            f'backbone ms ({LATENCY_SIZE[0]}px)': '-' if latency is None else latency}


def evaluate_at_ratios(runner: Runner, model: str, scorer: str, ratios: Sequence[float],
                   with_latency: bool, passes: tuple[int, int] = LATENCY_PASSES) -> list[dict]:
    """A detection row per pruning ratio (in every stage but the last), with the backbone's latency and the
    speedup over the first ratio when ``with_latency``. The backbone's ratios are restored afterwards."""
    backbone = runner.model.backbone
    ratios_before = backbone.pruning_ratios
    all_metrics = []
    for ratio in ratios:
        backbone.set_pruning_ratios(stage_ratios(ratio, backbone.depths))
        all_metrics.append(runner.test())
    latencies = latency_at_ratios(backbone, ratios, passes) if with_latency else [None] * len(ratios)
    backbone.set_pruning_ratios(ratios_before)
    return [detection_row(model, scorer, ratio, metrics, len(backbone.depths) - 1, latency,
                          latencies[0] / latency if with_latency else None)
            for ratio, metrics, latency in zip(ratios, all_metrics, latencies)]


def adapt_and_evaluate(scorer: str, args: argparse.Namespace, work_dir: Path,
                       dense_checkpoint: Path) -> tuple[Runner, Config, list[dict]]:
    """Sparsity-aware adaptation from the dense detector with ``scorer``, then a test at every EVAL_RATIOS."""
    cfg = demo_config(SCORER_CONFIGS[scorer], args, work_dir / f'adapt_{scorer.lower()}')
    cfg.load_from = str(dense_checkpoint)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner, cfg, evaluate_at_ratios(runner, 'SparseViT-Swin, adapted', scorer, EVAL_RATIOS, with_latency=True,
                                           passes=latency_passes(args))


def evaluated_sample(runner: Runner, index: int) -> tuple[np.ndarray, object, list[ForwardRecord]]:
    """The RGB image, the model's prediction (ground truth included) for test image ``index`` and the records
    of the backbone passes that made it (none for a backbone that does not record)."""
    data = pseudo_collate([runner.test_dataloader.dataset[index]])
    runner.model.eval()
    with torch.no_grad(), recording() as records:
        sample = runner.model.test_step(data)[0]
    return mmcv.imread(sample.img_path, channel_order='rgb'), sample, records


def detection_pictures(adapted: dict[str, tuple[Runner, Config]], out_dir: Path) -> list[Path]:
    """Per test image, one row per scorer: the kept windows of each pruned stage at PICTURE_RATIO, the
    ground-truth outlines and object coverage, and the predictions, all on the same image."""
    paths = []
    for index in range(min(NUM_PICTURES, len(next(iter(adapted.values()))[0].test_dataloader.dataset))):
        rows = []
        for scorer, (runner, cfg) in adapted.items():
            backbone = runner.model.backbone
            backbone.set_pruning_ratios(stage_ratios(PICTURE_RATIO, backbone.depths))
            image, sample, records = evaluated_sample(runner, index)
            panels = kept_window_masks(records[0])[:len(backbone.depths) - 1]
            with DefaultScope.overwrite_default_scope(cfg.default_scope):
                prediction = prediction_picture(cfg.visualizer, runner.test_dataloader.dataset.metainfo, image,
                                                sample, pred_score_thr=PICTURE_SCORE_THRESHOLD)
            rows.append(WindowPictureRow(f'{scorer} scorer', panels, prediction))
        figure = draw_kept_window_rows(
            image, rows, sample.metainfo['img_shape'], object_masks=sample.gt_instances.masks.to_ndarray(),
            title=f'Windows kept at pruning ratio {PICTURE_RATIO:g} (pruned ones dimmed; ground-truth objects '
                  f'outlined; predictions with score >= {PICTURE_SCORE_THRESHOLD:g}), test image {index}')
        paths.append(out_dir / f'detection_windows_{index}.png')
        figure.savefig(paths[-1])
        plt.close(figure)
    return paths


def segmentation_pictures(runner: Runner, out_dir: Path) -> list[Path]:
    """Per test image: the image, its ground-truth labels and the predicted ones."""
    metainfo = runner.test_dataloader.dataset.metainfo
    paths = []
    for index in range(min(NUM_PICTURES, len(runner.test_dataloader.dataset))):
        image, sample, _ = evaluated_sample(runner, index)
        figure = draw_segmentation(image, sample.gt_sem_seg.data[0].numpy(), sample.pred_sem_seg.data[0].numpy(),
                                   metainfo['classes'], metainfo['palette'],
                                   title=f'Semantic FPN + {SEG_MODEL}, test image {index}')
        paths.append(out_dir / f'segmentation_{index}.png')
        figure.savefig(paths[-1])
        plt.close(figure)
    return paths


def _log_warning(log: TextIO, message, category, filename, lineno, file=None, line=None) -> None:
    log.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def demo_step(number: int, title: str, log: TextIO, terminal: TextIO) -> Iterator[None]:
    """Step ``number`` as one line on ``terminal``; meanwhile what the libraries print (mmengine's runner logs,
    pycocotools, warnings) goes to ``log``, and the progress bars to stderr. A failure says which step failed and
    where its output is, then propagates."""
    print(f'[demo] {number}/{NUM_STEPS} {title}', file=terminal, flush=True)
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.showwarning = functools.partial(_log_warning, log)
        try:
            yield
        except BaseException:
            log.flush()
            print(f'[demo] step {number}/{NUM_STEPS} failed; what the libraries printed is in {log.name}',
                  file=sys.stderr, flush=True)
            raise


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout
    # Left open: the runners' loggers write to it for as long as they live.
    log = open(work_dir / 'demo.log', 'w')

    with demo_step(1, f'writing the synthetic datasets to {args.data_dir}', log, terminal):
        make_demo_data(args.data_dir, seed=args.seed, image_size=IMAGE_SIZE, tasks=('coco', 'ade'),
                       progress=lambda items, desc: tqdm(items, desc=desc, unit='img'),
                       **(QUICK_DATA_COUNTS if args.quick else DATA_COUNTS))

    with demo_step(2, 'Mask R-CNN + SparseViT-Swin: evaluate untrained, train dense, evaluate', log, terminal):
        det_cfg = demo_config(DET_CONFIG, args, work_dir / 'det')
        det_runner = Runner.from_cfg(det_cfg)
        pruned_stages = len(det_runner.model.backbone.depths) - 1
        detection = evaluate_at_ratios(det_runner, 'SparseViT-Swin, untrained', 'L2', UNADAPTED_RATIOS,
                                       with_latency=False)
        det_runner.train()
        detection += evaluate_at_ratios(det_runner, 'SparseViT-Swin, dense training', 'L2', UNADAPTED_RATIOS,
                                        with_latency=False)
        dense_checkpoint = work_dir / 'det' / f'iter_{det_cfg.train_cfg.max_iters}.pth'

    with demo_step(3, f'Semantic FPN + {SEG_MODEL}: evaluate untrained, train, evaluate', log, terminal):
        seg_runner = Runner.from_cfg(demo_config(SEG_CONFIG, args, work_dir / 'seg'))
        segmentation = [segmentation_row(f'{SEG_MODEL}, untrained', seg_runner.test())]
        seg_runner.train()
        segmentation.append(segmentation_row(f'{SEG_MODEL}, trained', seg_runner.test(),
                                             backbone_latency(seg_runner.model.backbone, latency_passes(args))))

    adapted = {}
    for step, scorer in enumerate(SCORER_CONFIGS, start=4):
        with demo_step(step, f'sparsity-aware adaptation with the {scorer} window scorer, then evaluation at '
                             f'pruning ratios {EVAL_RATIOS}', log, terminal):
            runner, cfg, rows = adapt_and_evaluate(scorer, args, work_dir, dense_checkpoint)
            adapted[scorer] = (runner, cfg)
            detection += rows

    with demo_step(6, 'pictures and tables', log, terminal):
        pictures = detection_pictures(adapted, work_dir) + segmentation_pictures(seg_runner, work_dir)
    # the data loader workers are children, counted once they have ended
    cpu_time = sum(usage.ru_utime + usage.ru_stime
                   for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    results = dict(detection=detection, segmentation=segmentation, seed=args.seed, quick=args.quick,
                   wall_time_s=round(time.perf_counter() - started, 1),
                   cpu_time_s=round(cpu_time, 1),
                   load_average=[round(load_at_start, 2), round(os.getloadavg()[0], 2)])
    tables = (f'Detection (COCO AP@[0.5:0.95]; coverage / kept area per pruned stage s1-s{pruned_stages}):\n\n'
              f'{markdown_table(detection, float_format=".3f")}\n\n'
              f'Segmentation (mIoU and pixel accuracy as fractions):\n\n'
              f'{markdown_table(segmentation, float_format=".3f")}\n\n'
              f'Wall time {results["wall_time_s"]:.0f} s, CPU time {results["cpu_time_s"]:.0f} s; '
              f'1-minute load average {results["load_average"][0]:.2f} at the start, '
              f'{results["load_average"][1]:.2f} at the end.\n')
    (work_dir / 'results.md').write_text(tables)
    (work_dir / 'results.json').write_text(json.dumps(results, indent=1))
    log.flush()
    print(tables)
    print('[demo] tables:', work_dir / 'results.md', work_dir / 'results.json', sep='\n  ')
    print('[demo] pictures:', *map(str, pictures), sep='\n  ')
    print('[demo] logs: what the libraries printed, and each run\'s mmengine log (<step>/<timestamp>/*.log):',
          log.name, *(str(work_dir / step) for step in RUN_DIRS), sep='\n  ')
    return results


if __name__ == '__main__':
    sys.exit(run_tool(main))
