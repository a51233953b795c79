"""The main job: the whole project on data it makes itself, through the mmdet/mmseg runners.

1. writes the seeded synthetic datasets: textured shapes on out-of-focus photographs, as COCO instances
   and ADE20K-style labels with a background class (plugin/demo_data/synthetic.py);
2. trains and evaluates Mask R-CNN with a small SparseViT-Swin, dense (mmdet's runner, CocoMetric);
3. trains and evaluates Semantic FPN with EfficientFormerV2-S0 (mmseg's runner, IoUMetric);
4. adapts the detector to sparsity (SparsityAwareAdaptationHook) with the paper's L2 window scorer and
5. from the same checkpoint, with the same schedule, with the learned window scorer; evaluates both at
   several pruning ratios: AP and the share of the ground-truth object pixels that lie in the kept windows
   of each stage (object coverage, ObjectCoverageHook), with sparsity in the backbone only and sparse all the
   way (SparseFPN and SparseRPNHead compute only the kept windows): with the adapted weights, then fine-tuned
   sparse all the way with the same schedule (the learned scorer frozen);
6. exports the L2-adapted detector whole to ONNX and evaluates it in ONNX Runtime (plugin.deploy), then times
   every detection row at 672x672 in one alternating loop, backbone and whole model from the same passes
   (detection counts held), beside their MACs;
7. writes the tables (results.md, results.json) and pictures under --work-dir.

Every runner is seeded and runs torch's deterministic algorithms: the same seed gives the same table on
the same machine with the same number of threads, the latencies aside.

The terminal shows a line per step, a progress bar per training run and test, the tables, and where the
pictures and logs are; what the libraries print (mmengine's runner logs among it) goes to --work-dir's
demo.log, and each runner also writes its own mmengine log under its work dir (det/, seg/, adapt_*/).

    python tools/demo.py             # the full demo (`make demo`), 40-55 minutes on 2 CPU cores
    python tools/demo.py --quick     # a smoke run on tiny data with a few iterations (the tests use it)
"""
import argparse
import contextlib
import copy
import dataclasses
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

from plugin.benchmarks.whole import PartTimer, alternating_part_latencies, packed_batch, photographs
from plugin.demo_data import make_demo_data
from plugin.deploy import OnnxDetector, export_mask_rcnn, with_exact_resize
from plugin.models.necks.sparse_fpn import FILL_SKIPPED
from plugin.models.utils.records import ForwardRecord, recording
from plugin.utils import count_macs_per_module, markdown_table
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
# The same detectors sparse all the way (SparseFPN, SparseRPNHead), tested from the adaptations' checkpoints,
# then fine-tuned sparse all the way.
SPARSE_CONFIGS = {'L2': CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_sparse-neck_saa_demo-shapes.py',
                  'learned': CONFIG_DIR / 'mask-rcnn_sparsevit-swin-mini_learned-scorer_sparse-neck_saa_demo-shapes.py'}
SEG_MODEL = 'EfficientFormerV2-S0'
EVAL_RATIOS = (0.0, 0.3, 0.5, 0.7)
SPARSE_RATIOS = (0.3, 0.5, 0.7)
PICTURE_RATIO = 0.5
# The detector exported whole and evaluated in ONNX Runtime.
ONNX_SCORER, ONNX_RATIO = 'L2', 0.5
# The detector before adaptation is tested dense and at PICTURE_RATIO with the L2 scorer, which it has.
UNADAPTED_RATIOS = (0.0, PICTURE_RATIO)
# Predictions drawn in the pictures: Mask R-CNN proposes several classes per object at lower scores.
PICTURE_SCORE_THRESHOLD = 0.5
NUM_PICTURES = 3
IMAGE_SIZE = (160, 160)
DATA_COUNTS = dict(num_train=300, num_val=50)
QUICK_DATA_COUNTS = dict(num_train=24, num_val=8)
QUICK_ITERS = 4
# --quick tests keep fewer proposals and detections: the mask head on 100 RoIs was 40% of a quick test pass.
QUICK_PROPOSALS, QUICK_DETECTIONS = 100, 20
# Latency is measured at the paper's detection size, where window sparsity pays.
LATENCY_SIZE = (672, 672)
LATENCY_REPEATS = 7
NUM_STEPS = 7
# The runners' work dirs under --work-dir, each with its mmengine log.
RUN_DIRS = ('det', 'seg', *(f'{kind}_{scorer.lower()}' for kind in ('adapt', 'sparse', 'finetune')
                             for scorer in SCORER_CONFIGS))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoints, tables and pictures')
    parser.add_argument('--data-dir', default='data/demo', help='where the synthetic datasets are written')
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of every runner')
    parser.add_argument('--quick', action='store_true',
                        help='tiny data, a few iterations, one timed pass at the image size: checks the pipeline, '
                             'not the numbers')
    return parser.parse_args(argv)


def stage_ratios(ratio: float, depths: Sequence[int]) -> list[float]:
    """One ratio per stage (the backbone gives it to each block): ``ratio`` in every stage but the last,
    which is a single window at the demo's image size."""
    return [ratio] * (len(depths) - 1) + [0.0]


def demo_config(path: Path, args: argparse.Namespace, work_dir: Path) -> Config:
    """The config at ``path`` pointed at this run's data and work dir, seeded (shortened with --quick)."""
    # Unformatted config text: yapf formatting cost 0.7 s for every runner start and checkpoint (47 s of a --quick
    # run's 160 s). mmengine 0.10.7's Config.fromfile drops its format_python_code argument, hence the copy.
    read = Config.fromfile(str(path))
    cfg = Config(read.to_dict(), cfg_text=read.text, filename=read.filename, format_python_code=False)
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
        for loader in ('train_dataloader', 'test_dataloader'):
            cfg[loader].update(num_workers=0, persistent_workers=False)  # a worker process costs more than it loads
        if 'rcnn' in cfg.model.get('test_cfg', {}):
            cfg.model.test_cfg.rpn.max_per_img = QUICK_PROPOSALS
            cfg.model.test_cfg.rcnn.max_per_img = QUICK_DETECTIONS
    # the log goes to a file (demo_step); a bar shows each training run and test on the terminal
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='ProgressBarHook')]
    return cfg


@dataclasses.dataclass(frozen=True)
class Timing:
    """Where and how the tables' latencies are measured: LATENCY_SIZE, LATENCY_REPEATS (--quick: the demo's image
    size, one pass)."""
    size: tuple[int, int]
    warmup: int
    repeats: int


@dataclasses.dataclass
class TimedRow:
    """A table row whose latency and MACs are measured: its model, at its pruning ratio (None: a model without
    pruning ratios) or as an ONNX Runtime detector; None: the row is not timed."""
    row: dict
    model: torch.nn.Module | OnnxDetector | None = None
    ratio: float | None = None


def held_detections(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a detector (eval mode) whose every image keeps its ``max_per_img`` detections (RoI score threshold
    0), so that models of different weights do the same work after the backbone; segmentors are copied as they
    are."""
    model = copy.deepcopy(model).eval()
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is not None:
        roi_head.test_cfg.score_thr = 0.0
    return model


def time_rows(rows: Sequence[TimedRow], timing: Timing) -> None:
    """Batch-1 latency at ``timing.size`` of every row, all timed in one alternating loop so that a change of the
    machine's load hits all of them alike: the backbone and the whole model (a packed batch to data samples)
    from the same passes, and the whole model's MACs. Each PyTorch row gets them, and its speedups over the first
    PyTorch row of its scorer at ratio 0 (sparse all the way at ratio 0 is that model)."""
    photo = photographs(timing.size, 1)
    timers: dict[int, PartTimer] = {}
    runs = []
    for entry in rows:
        if isinstance(entry.model, OnnxDetector):
            # From the uint8 photograph to pasted masks: preprocessing, ONNX Runtime and post-processing.
            runs.append(lambda detector=entry.model: _onnx_parts(detector, photo[0]))
            continue
        scope = entry.model.data_preprocessor.__module__.split('.')[0]
        data = packed_batch(scope, photo)
        timer = timers.setdefault(id(entry.model), PartTimer(entry.model, torch.device('cpu')))

        def run(entry=entry, timer=timer, data=data) -> dict[str, float]:
            if entry.ratio is not None:
                # setting the ratios costs microseconds; the timer times the pass alone
                entry.model.backbone.set_pruning_ratios(stage_ratios(entry.ratio, entry.model.backbone.depths))
            return timer.time(lambda: entry.model.test_step(data))
        runs.append(run)
        with torch.no_grad():
            run()
            macs = count_macs_per_module(lambda: entry.model.test_step(data))
        entry.row['whole GMACs'] = macs['Global'] / 1e9
    with torch.no_grad():
        latencies = alternating_part_latencies(runs, timing.warmup, timing.repeats, desc='timing')
    dense_by_scorer = {entry.row.get('scorer'): latency for entry, latency in zip(rows, latencies)
                       if entry.ratio == 0.0}
    for entry, latency in zip(rows, latencies):
        entry.row['backbone ms'] = latency.get('backbone', '-')
        entry.row['whole ms'] = latency['total']
        dense = dense_by_scorer.get(entry.row.get('scorer'))
        if dense is not None and entry.ratio is not None:
            entry.row['backbone speedup'] = dense['backbone'] / latency['backbone']
            entry.row['whole speedup'] = dense['total'] / latency['total']


def _onnx_parts(detector: OnnxDetector, image: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    detector.detect(image, channel_order='rgb')
    return {'total': (time.perf_counter() - start) * 1e3}


def _metric(metrics: dict[str, float], key: str, scale: float = 1.0):
    return float(metrics[key]) / scale if key in metrics else '-'


DETECTION_TIMING = ('backbone ms', 'whole ms', 'backbone speedup',
                    'whole speedup', 'whole GMACs')


def detection_row(model: str, scorer: str, ratio: float, metrics: dict[str, float], pruned_stages: int) -> dict:
    """AP and object coverage; the timing columns stay '-' unless :func:`time_rows` fills them."""
    row = {'model': model, 'scorer': scorer, 'pruning ratio': ratio,
           'bbox AP': _metric(metrics, 'coco/bbox_mAP'), 'segm AP': _metric(metrics, 'coco/segm_mAP')}
    for kind, key in (('coverage', 'coverage'), ('kept area', 'kept_area')):
        row.update({f'{kind} s{stage}': _metric(metrics, f'{key}/stage{stage}')
                    for stage in range(1, pruned_stages + 1)})
    row.update(dict.fromkeys(DETECTION_TIMING, '-'))
    return row


def segmentation_row(model: str, metrics: dict[str, float]) -> dict:
    return {'model': model, 'mIoU': _metric(metrics, 'mIoU', 100), 'pixel accuracy': _metric(metrics, 'aAcc', 100),
            'backbone ms': '-', 'whole ms': '-'}


def evaluate_at_ratios(runner: Runner, model: str, scorer: str, ratios: Sequence[float]) -> list[dict]:
    """A detection row per pruning ratio (in every stage but the last); the backbone's ratios are restored."""
    backbone = runner.model.backbone
    ratios_before = backbone.pruning_ratios
    rows = []
    for ratio in ratios:
        backbone.set_pruning_ratios(stage_ratios(ratio, backbone.depths))
        rows.append(detection_row(model, scorer, ratio, runner.test(), len(backbone.depths) - 1))
    backbone.set_pruning_ratios(ratios_before)
    return rows


def adapt_and_evaluate(scorer: str, args: argparse.Namespace, work_dir: Path,
                       dense_checkpoint: Path) -> tuple[Runner, Config, list[TimedRow]]:
    """Sparsity-aware adaptation from the dense detector with ``scorer``, then a test at every EVAL_RATIOS."""
    cfg = demo_config(SCORER_CONFIGS[scorer], args, work_dir / f'adapt_{scorer.lower()}')
    cfg.load_from = str(dense_checkpoint)
    runner = Runner.from_cfg(cfg)
    runner.train()
    rows = evaluate_at_ratios(runner, 'SparseViT-Swin, adapted', scorer, EVAL_RATIOS)
    timed = held_detections(runner.model)
    return runner, cfg, [TimedRow(row, timed, ratio) for row, ratio in zip(rows, EVAL_RATIOS)]


def sparse_all_the_way(scorer: str, args: argparse.Namespace, work_dir: Path,
                       adapted_checkpoint: Path) -> list[TimedRow]:
    """The adapted detector sparse all the way: with its weights as adapted, a test at every SPARSE_RATIOS and
    at PICTURE_RATIO with the other fill of skipped tiles; then fine-tuned sparse all the way with the
    adaptation's schedule and random sparsities (the learned scorer frozen), a test at every SPARSE_RATIOS,
    whose rows are timed."""
    cfg = demo_config(SPARSE_CONFIGS[scorer], args, work_dir / f'sparse_{scorer.lower()}')
    cfg.load_from = str(adapted_checkpoint)
    runner = Runner.from_cfg(cfg)
    neck = runner.model.neck
    configured = neck.fill_skipped
    entries = []
    # The configs' fill at every ratio, each other fill of skipped tiles at PICTURE_RATIO.
    for fill in (configured, *(fill for fill in FILL_SKIPPED if fill != configured)):
        neck.fill_skipped = fill
        entries += [TimedRow(row) for row in evaluate_at_ratios(
            runner, f'SparseViT-Swin, adapted, sparse all the way (skipped tiles: {fill})', scorer,
            SPARSE_RATIOS if fill == configured else (PICTURE_RATIO, ))]
    neck.fill_skipped = configured
    # A runner of its own: Runner.train() initialises the weights again and loads load_from only if nothing
    # was loaded before, which the tests above did.
    cfg = demo_config(SPARSE_CONFIGS[scorer], args, work_dir / f'finetune_{scorer.lower()}')
    cfg.load_from = str(adapted_checkpoint)
    runner = Runner.from_cfg(cfg)
    runner.train()
    rows = evaluate_at_ratios(runner, f'SparseViT-Swin, adapted, sparse all the way, fine-tuned sparse (skipped '
                                      f'tiles: {configured})', scorer, SPARSE_RATIOS)
    timed = held_detections(runner.model)
    return entries + [TimedRow(row, timed, ratio) for row, ratio in zip(rows, SPARSE_RATIOS)]


def onnx_runtime_rows(runner: Runner, cfg: Config, work_dir: Path, scorer: str, timing: Timing) -> list[TimedRow]:
    """The adapted detector at ONNX_RATIO exported whole (plugin.deploy) and evaluated in ONNX Runtime on the test
    set with the same CocoMetric; a second file at the timing size (detection counts held) is timed with the
    others."""
    model = runner.model
    model.eval()
    ratios = stage_ratios(ONNX_RATIO, model.backbone.depths)
    model.backbone.set_pruning_ratios(ratios)
    out_dir = work_dir / 'onnx'
    path, _ = export_mask_rcnn(cfg, model, out_dir / f'detector_{scorer.lower()}_{IMAGE_SIZE[0]}px.onnx', IMAGE_SIZE,
                               Path(cfg.filename).name, {'pruning_ratios': ratios})
    detector = OnnxDetector(path, threads=torch.get_num_threads())
    dataset = runner.test_dataloader.dataset
    evaluator = runner.build_evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dataset.metainfo
    for index in tqdm(range(len(dataset)), desc='ONNX Runtime test', unit='img', leave=False):
        info = dataset.get_data_info(index)
        evaluator.process(detector.predict(info['img_path'], metainfo=[{'img_id': info['img_id']}]))
    metrics = evaluator.evaluate(len(dataset))
    row = detection_row('SparseViT-Swin, adapted, ONNX Runtime (whole model)', scorer, ONNX_RATIO, metrics, 0)
    if tuple(timing.size) == IMAGE_SIZE:
        # --quick times at the evaluation size: the evaluated file (its detections not held) serves
        timed_path = path
    else:
        # resizing to the timing size exactly: the file runs the 672 photograph as the PyTorch rows do
        timed_path, _ = export_mask_rcnn(with_exact_resize(cfg, timing.size), held_detections(model),
                                         out_dir / f'detector_{scorer.lower()}_'
                                         f'{timing.size[0]}px_timed.onnx', timing.size, Path(cfg.filename).name,
                                         {'pruning_ratios': ratios, 'score_thr': 0.0})
    # Idle threads that spin would take the cores from the PyTorch model timed next.
    return [TimedRow(row, OnnxDetector(timed_path, threads=torch.get_num_threads(), spinning=False))]


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
        detection = [TimedRow(row) for row in evaluate_at_ratios(det_runner, 'SparseViT-Swin, untrained', 'L2',
                                                                 UNADAPTED_RATIOS)]
        det_runner.train()
        detection += [TimedRow(row) for row in evaluate_at_ratios(det_runner, 'SparseViT-Swin, dense training', 'L2',
                                                                  UNADAPTED_RATIOS)]
        dense_checkpoint = work_dir / 'det' / f'iter_{det_cfg.train_cfg.max_iters}.pth'

    with demo_step(3, f'Semantic FPN + {SEG_MODEL}: evaluate untrained, train, evaluate', log, terminal):
        seg_runner = Runner.from_cfg(demo_config(SEG_CONFIG, args, work_dir / 'seg'))
        segmentation = [TimedRow(segmentation_row(f'{SEG_MODEL}, untrained', seg_runner.test()))]
        seg_runner.train()
        segmentation.append(TimedRow(segmentation_row(f'{SEG_MODEL}, trained', seg_runner.test()),
                                     held_detections(seg_runner.model)))

    adapted = {}
    for step, scorer in enumerate(SCORER_CONFIGS, start=4):
        with demo_step(step, f'sparsity-aware adaptation with the {scorer} window scorer, then evaluation at '
                             f'pruning ratios {EVAL_RATIOS}; sparse all the way at {SPARSE_RATIOS}, as adapted and '
                             f'fine-tuned sparse', log,
                       terminal):
            runner, cfg, rows = adapt_and_evaluate(scorer, args, work_dir, dense_checkpoint)
            adapted[scorer] = (runner, cfg)
            detection += rows
            adapted_checkpoint = Path(cfg.work_dir) / f'iter_{cfg.train_cfg.max_iters}.pth'
            detection += sparse_all_the_way(scorer, args, work_dir, adapted_checkpoint)

    timing = Timing(IMAGE_SIZE, 0, 1) if args.quick else Timing(LATENCY_SIZE, 2, LATENCY_REPEATS)
    with demo_step(6, f'ONNX Runtime (the {ONNX_SCORER}-adapted detector whole at ratio {ONNX_RATIO:g}), then the '
                      f'latency of every row at {timing.size[0]}x{timing.size[1]} in one alternating loop', log,
                   terminal):
        detection += onnx_runtime_rows(*adapted[ONNX_SCORER], work_dir, ONNX_SCORER, timing)
        time_rows([entry for entry in detection if entry.model is not None], timing)
        time_rows([entry for entry in segmentation if entry.model is not None], timing)
    detection = [entry.row for entry in detection]
    segmentation = [entry.row for entry in segmentation]

    with demo_step(7, 'pictures and tables', log, terminal):
        pictures = detection_pictures(adapted, work_dir) + segmentation_pictures(seg_runner, work_dir)
    # the data loader workers are children, counted once they have ended
    cpu_time = sum(usage.ru_utime + usage.ru_stime
                   for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    results = dict(detection=detection, segmentation=segmentation, seed=args.seed, quick=args.quick,
                   latency_size=list(timing.size), latency_repeats=timing.repeats,
                   wall_time_s=round(time.perf_counter() - started, 1),
                   cpu_time_s=round(cpu_time, 1),
                   load_average=[round(load_at_start, 2), round(os.getloadavg()[0], 2)])
    where = f'{timing.size[0]}x{timing.size[1]}, batch 1, {torch.get_num_threads()} threads'
    tables = (f'Detection (COCO AP@[0.5:0.95]; coverage / kept area per pruned stage s1-s{pruned_stages}; latency '
              f'and GMACs at {where}, every timed row in one alternating loop, detection counts held; speedups '
              f'against the same scorer at ratio 0):\n\n'
              f'{markdown_table(detection, float_format=".3f")}\n\n'
              f'Segmentation (mIoU and pixel accuracy as fractions; latency and GMACs at {where}):\n\n'
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
