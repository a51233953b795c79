"""The windows a SparseViT backbone keeps on an image, stage by stage, next to the model's predictions.

    python tools/visualize_windows.py CONFIG CHECKPOINT IMAGE --out windows.png
    python tools/visualize_windows.py CONFIG CHECKPOINT IMAGE --out windows.png --pruning-ratios 0.5

Works with mmdet detectors and mmseg segmentors whose backbone is SparseViTSwin.
Each stage's panel shows the stage's last unshifted block (its sparsest set of
windows on the regular grid); pruned windows are dimmed. The last panel shows
the predictions drawn by the task's own visualizer.
"""
import argparse
import copy
import functools
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction

from plugin.models.utils.checkpoint import load_model_checkpoint
from plugin.models.utils.records import ForwardRecord, recording
from plugin.models.utils.sparsity import find_sparse_backbone, paper_pruning_ratios
from plugin.utils.cli import HelpFormatter, pruning_ratios, run_tool
from plugin.visualization import draw_kept_windows, kept_window_masks, prediction_picture

PURPOSE = 'tools/visualize_windows.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('config', help='an mmdet or mmseg config with a SparseViTSwin backbone')
    parser.add_argument('checkpoint', help='a path or URL')
    parser.add_argument('image', help='the image to draw on')
    parser.add_argument('--out', required=True, help='PNG file to write')
    parser.add_argument('--pruning-ratios', type=functools.partial(pruning_ratios, named=paper_pruning_ratios),
                        default=None, help="ratios instead of the config's: JSON, e.g. [0.5,0.5,0.5,0] or "
                        '[[0.6,0.6],[0,0],[0.2,0.2,0.4,0.4,0.5,0.5],[0,0]], or cfg1/cfg2/cfg3 (the paper\'s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='where to run')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def init_model(cfg: Config, checkpoint: str, device: str) -> nn.Module:
    """The task's own inference model with the checkpoint's weights and class names."""
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        from mmdet.apis import init_detector
        # The checkpoint is loaded below, class names included: mmdet's "checkpoint is None, use COCO
        # classes" does not apply. It resets the warning filters itself, so its warnings are recorded here.
        with warnings.catch_warnings(record=True) as caught:
            model = init_detector(cfg, None, device=device)
        for warning in caught:
            if 'checkpoint is None' not in str(warning.message):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    elif scope == 'mmseg':
        if cfg.model.get('test_cfg', {}).get('mode') == 'slide':
            # Sliding windows run the backbone once per crop; one whole-image pass gives one picture.
            print('note: running the segmentor on the whole image instead of sliding crops')
            cfg.model.test_cfg = dict(mode='whole')
        from mmseg.apis import init_model as init_segmentor
        model = init_segmentor(cfg, None, device=device)
    else:
        raise ValueError(f'default_scope {scope!r} is not supported: use an mmdet or mmseg config')
    loaded = load_model_checkpoint(model, checkpoint)
    dataset_meta = loaded.get('meta', {}).get('dataset_meta') if isinstance(loaded.get('meta'), dict) else None
    if dataset_meta:
        model.dataset_meta = {key.lower(): value for key, value in dataset_meta.items()}
    elif not getattr(model, 'dataset_meta', None):
        from mmengine.registry import DATASETS
        dataset_cfg = dict(copy.deepcopy(cfg.test_dataloader.dataset), lazy_init=True)
        model.dataset_meta = DATASETS.build(dataset_cfg).metainfo
    return model


def predict(scope: str, model: nn.Module, image: str) -> tuple[object, ForwardRecord]:
    """The prediction for ``image`` and the record of the backbone's forward pass that made it."""
    with recording() as records:
        if scope == 'mmdet':
            from mmdet.apis import inference_detector
            result = inference_detector(model, image)
        else:
            from mmseg.apis import inference_model
            result = inference_model(model, image)
    return result, records[-1]


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    import mmcv

    if not Path(args.image).is_file():
        raise FileNotFoundError(f'image {args.image} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('default_scope') not in ('mmdet', 'mmseg'):
        raise ValueError(f'default_scope {cfg.get("default_scope")!r} is not supported: use an mmdet or mmseg config')
    if cfg.model.get('backbone', {}).get('type') != 'SparseViTSwin':
        raise TypeError(f'{PURPOSE} draws the windows of a SparseViTSwin backbone; the config\'s backbone is '
                        f'{cfg.model.get("backbone", {}).get("type")}. For other backbones use mmdet\'s or '
                        f'mmseg\'s inferencer (README, "Demo")')
    model = init_model(cfg, args.checkpoint, args.device)
    backbone = find_sparse_backbone(model, PURPOSE)
    if args.pruning_ratios is not None:
        backbone.set_pruning_ratios(args.pruning_ratios)
    result, record = predict(cfg.default_scope, model, args.image)

    panels = kept_window_masks(record)
    image = mmcv.imread(args.image, channel_order='rgb')
    picture = prediction_picture(cfg.visualizer, model.dataset_meta, image, result)
    figure = draw_kept_windows(image, panels, result.metainfo['img_shape'], picture)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    for panel in panels:
        print(f'stage {panel.stage + 1}: block {panel.block + 1} (ratio {panel.ratio:g}) kept '
              f'{panel.kept}/{panel.total} windows')
    print(f'written {out}')
    return out


if __name__ == '__main__':
    sys.exit(run_tool(main))
