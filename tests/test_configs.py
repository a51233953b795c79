"""Every config under configs/ builds, takes one training step and predicts, on tiny synthetic inputs.

The models keep their real sizes; only the images are small and no pretrained
weights are loaded (the configs point at downloads that this machine cannot make).
"""
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, Registry, init_default_scope
from mmengine.registry import root as root_registries

import plugin  # noqa: F401  (registers the project's modules)
from plugin.models.utils.sparsity import RATIO_CHOICES
from plugin.utils.package_data import CONFIG_ROOT as SHIPPED_CONFIG_ROOT
from plugin.utils.package_data import CONFIG_SCOPE

CONFIG_ROOT = Path(__file__).resolve().parents[1] / 'configs'
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob('*.py') if '_base_' not in p.parts)
IMAGE_SHAPE = (3, 96, 128)


def detection_batch(cfg: Config) -> dict:
    from mmdet.testing import demo_mm_inputs
    num_classes = cfg.model.roi_head.bbox_head.num_classes
    return demo_mm_inputs(batch_size=2, image_shapes=IMAGE_SHAPE, num_items=[3, 2],
                          num_classes=num_classes, with_mask=True)


def segmentation_batch(cfg: Config) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    num_classes = cfg.model.decode_head.num_classes
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, IMAGE_SHAPE, dtype=torch.uint8, generator=generator))
        labels = torch.randint(0, num_classes, (1, *IMAGE_SHAPE[1:]), generator=generator)
        samples.append(SegDataSample(
            gt_sem_seg=PixelData(data=labels),
            metainfo=dict(img_shape=IMAGE_SHAPE[1:], ori_shape=IMAGE_SHAPE[1:], pad_shape=IMAGE_SHAPE[1:])))
    return dict(inputs=inputs, data_samples=samples)


# Synthetic batches per default scope; a new task family adds its maker here.
BATCH_MAKERS = {'mmdet': detection_batch, 'mmseg': segmentation_batch}


@functools.lru_cache(maxsize=None)
def load_config(path: Path) -> Config:
    """The config at ``path``, read once for the tests that only look at it."""
    return Config.fromfile(str(path))


def test_every_config_is_covered():
    assert CONFIGS, 'no configs found'
    scopes = {load_config(path).get('default_scope') for path in CONFIGS}
    assert scopes <= set(BATCH_MAKERS) | {'mmdet3d'}, scopes


def without_scopes(node):
    """``node`` without the ``_scope_`` entries that mmengine adds to the configs it reads from a package."""
    if isinstance(node, dict):
        return {key: without_scopes(value) for key, value in node.items() if key != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(without_scopes(value) for value in node)
    return node


def typed_dicts(node, scope: str | None = None, where: str = '') -> Iterator[tuple[str, str, str | None]]:
    """``(where, type, scope)`` of every dict with a ``type``; the scope is the dict's ``_scope_`` or the one of
    the nearest dict around it that has one (the default scope its build runs under)."""
    if isinstance(node, dict):
        scope = node.get('_scope_', scope)
        if isinstance(node.get('type'), str):
            yield where, node['type'], scope
        for key, value in node.items():
            yield from typed_dicts(value, scope, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from typed_dicts(value, scope, f'{where}[{index}]')


def test_configs_read_the_same_through_the_package_scope(tmp_path):
    """A user's config inherits a shipped one as ``effidense::<folder>/<name>.py`` (plugin/.mim/configs). mmengine
    reads it as it reads the file and marks the typed dicts that config defines itself with ``_scope_='effidense'``;
    no registry has that scope, so mmengine builds them from its root registries. Each must get there the class
    the config's own default scope gives it: a task library's transform or dataset must name its scope
    (``mmdet.Resize``: the root's ``Resize`` is mmcv's, which resizes no boxes)."""
    roots = [registry for registry in vars(root_registries).values() if isinstance(registry, Registry)]
    for path in CONFIGS:
        name = path.relative_to(CONFIG_ROOT).as_posix()
        assert (SHIPPED_CONFIG_ROOT / name).samefile(path), name
        user = tmp_path / 'user.py'
        user.write_text(f"_base_ = ['{CONFIG_SCOPE}::{name}']\n")
        cfg = Config.fromfile(str(user))
        assert without_scopes(cfg.to_dict()) == without_scopes(load_config(path).to_dict()), name
        for where, type_name, scope in typed_dicts(cfg.to_dict()):
            if scope != CONFIG_SCOPE:
                continue
            # The class each registry gives under the config's default scope, and from its root.
            expected = {registry: (registry._search_child(cfg.default_scope) or registry).get(type_name)
                        for registry in roots}
            expected = {registry: cls for registry, cls in expected.items() if cls is not None}
            assert expected, f'{name}: {where} {type_name!r} is in no registry of {cfg.default_scope}'
            assert all(registry.get(type_name) is cls for registry, cls in expected.items()), \
                f'{name}: {where} {type_name!r} builds another class from mmengine\'s root registry than from ' \
                f'{cfg.default_scope}\'s: write {cfg.default_scope}.{type_name}'


def fewer_boxes(model: dict) -> None:
    """A two-stage detector's heads on 100 proposals and 64 sampled RoIs per image instead of COCO's 1000 and
    512: the same modules and losses, at a fifth of the step's time on the test's tiny images."""
    train_cfg, test_cfg = model.get('train_cfg') or {}, model.get('test_cfg') or {}
    if 'rpn_proposal' in train_cfg:
        train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        train_cfg.rcnn.sampler.num = 64
    if 'rpn' in test_cfg and 'rcnn' in test_cfg:
        test_cfg.rpn.update(nms_pre=200, max_per_img=100)


@pytest.mark.slow
@pytest.mark.parametrize('config_path', CONFIGS, ids=[str(p.relative_to(CONFIG_ROOT)) for p in CONFIGS])
def test_config_trains_one_step_and_predicts(config_path):
    cfg = Config.fromfile(str(config_path))
    scope = cfg.get('default_scope')
    if scope not in BATCH_MAKERS:
        pytest.skip(f'{scope} configs are exercised by their own test module')
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    fewer_boxes(cfg.model)
    if cfg.model.data_preprocessor.get('size') is not None:
        # mmseg's preprocessor pads to the crop size (512x512); the test images are smaller.
        cfg.model.data_preprocessor.size = IMAGE_SHAPE[1:]
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    # Mixed-precision wrappers need a GPU; the optimizer itself is what the config sets.
    optim_wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type='OptimWrapper'))
    batch = BATCH_MAKERS[scope](cfg)

    model.train()
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses

    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch)
    assert len(predictions) == len(batch['inputs'])


def sparsevit_backbone(cfg: Config) -> nn.Module:
    """The config's SparseViT-Swin backbone, seeded, without its pretrained weights."""
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    return MODELS.build(dict(cfg.model.backbone, init_cfg=None, convert_weights=False))


def sparsevit_training_step(backbone: nn.Module, image_size, ratio=None) -> set:
    """Parameters of ``backbone`` that one training step at ``image_size`` leaves without gradient (at
    ``ratio`` everywhere, else the backbone's ratios), as ``'stage.module'`` names."""
    backbone.train()
    if ratio is not None:
        backbone.set_pruning_ratios(ratio)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the warning of a block that keeps no window
        outputs, record = backbone.forward_with_record(torch.randn(1, 3, *image_size))
    (sum(out.square().mean() for out in outputs) + sum(backbone.auxiliary_losses(record).values())).backward()
    return {'.'.join(name.split('.')[1:3]) for name, p in backbone.named_parameters()
            if p.requires_grad and p.grad is None}


def test_find_unused_parameters_is_set_where_a_training_step_skips_a_module(one_thread):
    """DDP must be told (find_unused_parameters) where a training step can leave parameters without gradient:
    the learned scorer of a stage whose ratios are all 0 never runs, and an adaptation config's drawn ratios
    skip a block that keeps no window. The paper's adaptation configs train at 480 px or more (COCO) and
    512x512 (ADE20K), where the last stage has 6 windows or more and keeps one at the largest ratio, 0.8;
    every other config runs every module."""
    needing = set()
    for path in CONFIGS:
        cfg = load_config(path)
        name = str(path.relative_to(CONFIG_ROOT))
        adaptation = [hook for hook in cfg.get('custom_hooks', []) if hook.type == 'SparsityAwareAdaptationHook']
        if cfg.model.backbone.get('scorer') == 'learned' and not cfg.model.backbone.get('freeze_scorer'):
            # Training runs every window of a pruned stage (nested decisions), so the input size does not matter;
            # the scorer of a stage at ratio 0 never runs (the paper's configs: stages 1 and 3). A frozen scorer
            # takes no gradient and ranks as at inference: the rules below apply.
            backbone = sparsevit_backbone(cfg)
            expected = {f'{stage}.window_scorer' for stage, ratios in enumerate(backbone.pruning_ratios)
                        if not any(ratios)}
            assert expected and sparsevit_training_step(backbone, (64, 64)) == expected, name
            needing.add(name)
        elif adaptation and 'image_size' in cfg:
            assert sparsevit_training_step(sparsevit_backbone(cfg), cfg.image_size,
                                           max(adaptation[0].get('choices', RATIO_CHOICES))), name
            needing.add(name)
    assert {str(p.relative_to(CONFIG_ROOT)) for p in CONFIGS if load_config(p).get('find_unused_parameters')} == needing
