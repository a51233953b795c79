"""Export a config's backbone (or backbone + neck, or a whole segmentor) to ONNX or torch.export, then check it.

    python tools/export.py CONFIG [CHECKPOINT] --format onnx --shape 672 672 --out work_dirs/backbone.onnx
    python tools/export.py configs/sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672.py \\
        --format onnx --shape 672 672 --pruning-ratios cfg2 --with-neck --out work_dirs/sparsevit_cfg2_fpn.onnx
    python tools/export.py configs/efficientformer/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py \\
        --format torch-export --shape 512 512 --dynamic --fuse --out work_dirs/efficientformer_l1.pt2
    python tools/export.py configs/efficientformer/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py \\
        --format onnx --shape 512 512 --whole-model --fuse --out work_dirs/fpn_efficientformer_l1.onnx
    python tools/export.py configs/sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg2.py \\
        CHECKPOINT --shape 672 672 --whole-model --out work_dirs/mask_rcnn_cfg2_672.onnx

The file is then loaded and run (ONNX: in ONNX Runtime on the CPU) on the input used at
export and on a second random input (of --check-shape with --dynamic), and its largest
difference to PyTorch is printed; relative = max |diff| / max |PyTorch output|, per
output. Above --rtol the tool ends with an error. Weights are random without CHECKPOINT.

SparseViT-Swin exports with the window selection in the graph (a TopK over window
scores), so another input selects other windows, as in PyTorch; the number of windows
each block keeps is fixed by --shape and the pruning ratios. --dynamic exports height and
width as variables (sides 64 to 4096) where the trace allows it (EfficientFormer/V2);
SparseViT-Swin and DynamicViT keep Python counts of the input size (windows, tokens) and
export at static sizes only: one file per size. --whole-model exports an mmseg segmentor
to its logits, or a whole Mask R-CNN (``plugin.deploy.detector``: standard ONNX operators,
NonMaxSuppression and RoiAlign included) to fixed-size detections, with the metadata its
runner (``plugin.deploy.OnnxDetector``, ``tools/infer_onnx.py``) reads: the config's test
resize, normalisation, class names and a fingerprint of its model settings. A detector is
checked by its detections against mmdet's ``predict`` (not by feature maps): on a random
image filling --shape and on a smaller one padded to it, per image the counts, the
matched detections (same label, box IoU > 0.5), the worst matched box IoU (>= 0.99),
score difference (<= 1e-3) and pasted-mask IoU (>= 0.98). Float error between the
runtimes decides only ties, which random weights make common: unmatched detections are
accepted only as near ties (scores within 1e-3), and mask pixels whose probability lies
within 0.01 of the threshold are left out of the mask IoU that must hold. Whole
detectors export to ONNX only, at a static size (a multiple of the preprocessor's
pad_size_divisor), batch --batch. See docs/deploy.md.
"""
import argparse
import copy
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config

from plugin.deploy import (
    PARITY,
    SUFFIXES,
    ExportError,
    OnnxDetector,
    check_any_size,
    compare_detections,
    compare_with_pytorch,
    export_mask_rcnn,
    feature_extractor,
    load_runner,
    mmdet_predict,
    save,
    segmentor_logits,
    trace,
)
from plugin.models.backbones import EfficientFormer, EfficientFormerV2
from plugin.models.utils.sparsity import find_sparse_backbone, paper_pruning_ratios
from plugin.search.evaluation import build_model
from plugin.utils import markdown_table
from plugin.utils.cli import HelpFormatter, pruning_ratios, run_tool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('config', help='an mmdet / mmseg / mmdet3d config whose backbone is one of this project\'s')
    parser.add_argument('checkpoint', nargs='?', default=None, help='weights of the whole model (random without)')
    parser.add_argument('--format', choices=sorted(SUFFIXES), default='onnx', help='what to write')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='input size at export')
    parser.add_argument('--out', required=True, help=f'file to write ({", ".join(SUFFIXES.values())} by format)')
    parser.add_argument('--pruning-ratios', type=functools.partial(pruning_ratios, named=paper_pruning_ratios),
                        default=None, help='SparseViT ratios instead of the config\'s: JSON, e.g. 0.5 or '
                        '[[0.3,0.3],[0,0],[0.1,0.1,0.2,0.2,0.2,0.2],[0,0]], or cfg1/cfg2/cfg3 (the paper\'s)')
    part = parser.add_mutually_exclusive_group()
    part.add_argument('--with-neck', action='store_true', help='export backbone + neck (the heads\' input)')
    part.add_argument('--whole-model', action='store_true',
                      help='export a whole mmseg segmentor (to its logits) or Mask R-CNN (to its detections)')
    parser.add_argument('--fuse', action='store_true', help='fold BatchNorm into the convs first (EfficientFormer/V2)')
    parser.add_argument('--dynamic', action='store_true', help='height and width as variables of the graph')
    parser.add_argument('--check-shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='size of the second check input; without it --shape, or with --dynamic --shape + (37, 61)')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the exported graph (fixed)')
    parser.add_argument('--rtol', type=float, default=1e-4, help='largest relative difference accepted')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights and inputs')
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or (args.check_shape and min(args.check_shape) < 1) or args.batch < 1:
        parser.error(f'--shape and --check-shape need positive sides and --batch a positive size, got {args.shape}, '
                     f'{args.check_shape} and {args.batch}')
    suffix = SUFFIXES[args.format]
    if Path(args.out).suffix != suffix:
        parser.error(f'--out of --format {args.format} must end in {suffix}, got {args.out}')
    return args


def check_shape(args: argparse.Namespace) -> list[int]:
    if args.check_shape:
        return args.check_shape
    # Odd offsets: a second size that pads differently wherever a model pads.
    return [args.shape[0] + 37, args.shape[1] + 61] if args.dynamic else list(args.shape)


def fuse_backbone(module: torch.nn.Module) -> None:
    """--fuse: fold the BatchNorms of an EfficientFormer / EfficientFormerV2 backbone into its convs."""
    if not isinstance(module.backbone, (EfficientFormer, EfficientFormerV2)):
        raise ValueError(f'--fuse folds the BatchNorms of EfficientFormer / EfficientFormerV2; the backbone is '
                         f'{type(module.backbone).__name__}')
    module.backbone.fuse()


def is_segmentor(model: torch.nn.Module) -> bool:
    from mmseg.models.segmentors import EncoderDecoder
    return isinstance(model, EncoderDecoder)


def export_detector(args: argparse.Namespace, cfg: Config, model: torch.nn.Module) -> list[dict]:
    """--whole-model of a detector: export, then compare the file's detections with mmdet's predict."""
    if args.format != 'onnx':
        raise ValueError('--whole-model exports a detector to ONNX only (the file carries the metadata its runner '
                         'reads): use --format onnx')
    if args.dynamic or args.check_shape:
        raise ValueError('a whole detector exports at a static size (its anchors and per-level top-k counts follow '
                         'from it) and is checked at --shape: drop --dynamic / --check-shape, export one file per size')
    overrides = {'pruning_ratios': args.pruning_ratios, 'fuse': args.fuse or None}
    if args.fuse:
        fuse_backbone(model)
    path, checks = export_mask_rcnn(cfg, model, args.out, args.shape, Path(args.config).name,
                                    {key: value for key, value in overrides.items() if value is not None},
                                    args.batch, args.seed)
    runner = OnnxDetector(path, threads=torch.get_num_threads())
    rcnn_cfg = model.roi_head.test_cfg
    rows, parities = [], []
    for name, batch in zip(('export input', 'smaller image'), checks):
        for index, (detections, reference) in enumerate(zip(runner.run_prepared(batch), mmdet_predict(model, batch))):
            parity = compare_detections(detections, reference.pred_instances, rcnn_cfg.score_thr, runner.max_detections)
            shape = 'x'.join(map(str, batch[index].img_shape))
            rows.append({'input': f'{shape} in {args.shape[0]}x{args.shape[1]}, image {index} ({name})',
                         **parity.row()})
            parities.append(parity)
    print(f'# {type(model).__name__} with {type(model.backbone).__name__}, whole model -> {path} (onnx, static size '
          f'{args.shape[0]}x{args.shape[1]}, batch {args.batch}, up to {runner.max_detections} detections), '
          f'torch {torch.__version__}; detections against mmdet\'s predict')
    print(markdown_table(rows))
    if not all(parity.holds_up_to_ties for parity in parities):
        raise ExportError(f'the exported detector\'s detections differ from mmdet\'s beyond near ties (box IoU '
                          f'>= {PARITY["box_iou"]}, score within {PARITY["score_atol"]}, mask IoU >= '
                          f'{PARITY["mask_iou"]})')
    print('detections match mmdet\'s predict' + (' up to near ties' if any(p.near_ties for p in parities) else ''))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = Config.fromfile(args.config)
    # mmdet's two-stage detectors write their test_cfg into the config dicts they are built from
    model = build_model(copy.deepcopy(cfg), args.checkpoint, 'cpu')
    if args.pruning_ratios is not None:
        find_sparse_backbone(model, '--pruning-ratios').set_pruning_ratios(args.pruning_ratios)
    if args.whole_model and not is_segmentor(model):
        return export_detector(args, cfg, model)
    extractor = segmentor_logits(model) if args.whole_model else feature_extractor(model, args.with_neck)
    if args.fuse:
        fuse_backbone(extractor)

    example = torch.randn(args.batch, 3, *args.shape)
    program = trace(extractor, example, dynamic_size=args.dynamic)
    second = torch.randn(args.batch, 3, *check_shape(args))
    if args.dynamic:
        check_any_size(program, second)
    path = save(program, args.format, Path(args.out))
    rows = compare_with_pytorch(load_runner(path, args.format), extractor, [example, second])
    rows[0]['input'] += ' (export input)'
    what = 'segmentor (logits)' if args.whole_model else 'backbone + neck' if args.with_neck else 'backbone'
    print(f'# {type(extractor.backbone).__name__} {what} -> {path} ({args.format}, '
          f'{"dynamic" if args.dynamic else "static"} size, exported at batch {args.batch}, '
          f'{args.shape[0]}x{args.shape[1]}), '
          f'torch {torch.__version__}')
    print(markdown_table(rows))
    worst = max(row['max relative diff'] for row in rows)
    if worst > args.rtol:
        raise ExportError(f'the exported model differs from PyTorch by {worst:.2e} (relative), above --rtol '
                          f'{args.rtol:g}')
    print(f'largest relative difference {worst:.2e} <= --rtol {args.rtol:g}')
    return rows


if __name__ == '__main__':
    sys.exit(run_tool(main))
