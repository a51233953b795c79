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
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from plugin.engine.hooks import find_sparse_backbone  # noqa: E402
from plugin.search.evaluation import load_trusted_checkpoint  # noqa: E402
from plugin.search.space import parse_pruning_ratios  # noqa: E402
from plugin.visualization import draw_kept_windows, kept_window_masks, prediction_picture  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='a path or URL')
    parser.add_argument('image')
    parser.add_argument('--out', required=True, help='PNG file to write')
    parser.add_argument('--pruning-ratios', type=parse_pruning_ratios, default=None,
                        help="JSON ratios instead of the config's, e.g. 0.5 or "
                             '[[0.6,0.6],[0,0],[0.2,0.2,0.4,0.4,0.5,0.5],[0,0]]')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def init_model(cfg: Config, checkpoint: str, device: str) -> nn.Module:
    """The task's own inference model with the checkpoint's weights and class names."""
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        from mmdet.apis import init_detector
        with warnings.catch_warnings():
            # The checkpoint is loaded below, class names included.
            warnings.filterwarnings('ignore', message='checkpoint is None')
            model = init_detector(cfg, None, device=device)
    elif scope == 'mmseg':
        if cfg.model.get('test_cfg', {}).get('mode') == 'slide':
            # Sliding windows run the backbone once per crop; one whole-image pass gives one picture.
            print('note: running the segmentor on the whole image instead of sliding crops')
            cfg.model.test_cfg = dict(mode='whole')
        from mmseg.apis import init_model as init_segmentor
        model = init_segmentor(cfg, None, device=device)
    else:
        raise ValueError(f'default_scope {scope!r} is not supported: use an mmdet or mmseg config')
    loaded = load_trusted_checkpoint(model, checkpoint)
    dataset_meta = loaded.get('meta', {}).get('dataset_meta') if isinstance(loaded.get('meta'), dict) else None
    if dataset_meta:
        model.dataset_meta = {key.lower(): value for key, value in dataset_meta.items()}
    elif not getattr(model, 'dataset_meta', None):
        from mmengine.registry import DATASETS
        dataset_cfg = dict(copy.deepcopy(cfg.test_dataloader.dataset), lazy_init=True)
        model.dataset_meta = DATASETS.build(dataset_cfg).metainfo
    return model


def predict(model: nn.Module, scope: str, image: str) -> Tuple[object, Tuple[int, int]]:
    """The prediction for ``image`` and the (H, W) of the tensor the backbone received."""
    received = {}
    handle = find_sparse_backbone(model).register_forward_pre_hook(
        lambda module, inputs: received.update(hw=tuple(inputs[0].shape[-2:])))
    try:
        if scope == 'mmdet':
            from mmdet.apis import inference_detector
            result = inference_detector(model, image)
        else:
            from mmseg.apis import inference_model
            result = inference_model(model, image)
    finally:
        handle.remove()
    return result, received['hw']


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    import mmcv

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = init_model(cfg, args.checkpoint, args.device)
    backbone = find_sparse_backbone(model)
    if args.pruning_ratios is not None:
        backbone.set_pruning_ratios(args.pruning_ratios)
    result, input_hw = predict(model, cfg.default_scope, args.image)

    panels = kept_window_masks(backbone, input_hw)
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
    main()
