"""EfficientFormer / EfficientFormerV2 backbones against timm at the same weights,
against a literal transcription of the authors' dense-prediction attention, and
their dense-prediction behaviour (any input size, freezing, Conv-BN folding,
checkpoint formats and errors)."""
import argparse
import copy
import functools
import importlib.util
import itertools
import math
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from random_weights import randomize
from torch.nn.modules.batchnorm import _BatchNorm

from plugin.models.backbones import EfficientFormer, EfficientFormerV2
from plugin.models.backbones.efficientformer_convert import convert_efficientformer_keys, convert_efficientformerv2_keys

V1_ARCHS = ['l1', 'l3', 'l7']
V2_ARCHS = ['s0', 's1', 's2', 'l']
TOOLS = Path(__file__).resolve().parents[1] / 'tools'


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@functools.lru_cache(maxsize=None)
def _timm_model(name: str) -> nn.Module:
    return randomize(timm.create_model(name, pretrained=False)).eval()


def timm_v1(arch: str) -> nn.Module:
    """timm's randomly initialised model (a copy: tests may patch it), built once per arch."""
    return copy.deepcopy(_timm_model(f'efficientformer_{arch}'))


def timm_v2(arch: str) -> nn.Module:
    return copy.deepcopy(_timm_model(f'efficientformerv2_{arch}'))


def assert_features_close(ours, reference, atol=1e-5):
    assert len(ours) == len(reference)
    for out, ref in zip(ours, reference):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=atol)


# ----------------------------------------------------------------------------------------------
# The authors' key layouts, written out from their module trees (snap-research/EfficientFormer:
# models/efficientformer*.py, detection/backbone*.py), to build checkpoints in their format.

def official_v1_key(key: str) -> str:
    """timm V1 key -> the authors' (timm keeps their block numbering, Flat gap included)."""
    key = re.sub(r'^stem\.(conv1|norm1|conv2|norm2)\.',
                 lambda m: f'patch_embed.{dict(conv1=0, norm1=1, conv2=3, norm2=4)[m[1]]}.', key)
    key = re.sub(r'^stages\.(\d+)\.downsample\.(conv|norm)\.',
                 lambda m: f'network.{2 * int(m[1]) - 1}.{"proj" if m[2] == "conv" else "norm"}.', key)
    key = re.sub(r'^stages\.(\d+)\.blocks\.', lambda m: f'network.{2 * int(m[1])}.', key)
    key = re.sub(r'\.ls(\d)\.gamma$', r'.layer_scale_\1', key)
    return key.replace('head_dist.', 'dist_head.')


def mmpretrain_v1_key(key: str) -> str:
    """timm V1 key -> mmpretrain's (downsampling conv first in each later stage, LayerScale 'weight')."""
    key = re.sub(r'^stem\.(conv|norm)(\d)\.',
                 lambda m: f'patch_embed.{int(m[2]) - 1}.{"conv" if m[1] == "conv" else "bn"}.', key)
    key = re.sub(r'^stages\.(\d+)\.downsample\.(conv|norm)\.',
                 lambda m: f'network.{m[1]}.0.{"conv" if m[2] == "conv" else "bn"}.', key)
    key = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.',
                 lambda m: f'network.{m[1]}.{int(m[2]) + (int(m[1]) > 0)}.', key)
    key = re.sub(r'\.ls(\d)\.gamma$', r'.ls\1.weight', key)
    return re.sub(r'^norm\.', 'norm3.', key)  # mmpretrain's classification LayerNorm


_OFFICIAL_V2_INNER = [
    (r'\.mlp\.fc1\.conv\.', '.mlp.fc1.'), (r'\.mlp\.fc1\.bn\.', '.mlp.norm1.'),
    (r'\.mlp\.mid\.conv\.', '.mlp.mid.'), (r'\.mlp\.mid\.bn\.', '.mlp.mid_norm.'),
    (r'\.mlp\.fc2\.conv\.', '.mlp.fc2.'), (r'\.mlp\.fc2\.bn\.', '.mlp.norm2.'),
    (r'\.q\.local\.', '.q.local.0.'), (r'\.q\.proj\.conv\.', '.q.proj.0.'), (r'\.q\.proj\.bn\.', '.q.proj.1.'),
    (r'\.(q|k|v|v_local|stride_conv)\.conv\.', r'.\1.0.'), (r'\.(q|k|v|v_local|stride_conv)\.bn\.', r'.\1.1.'),
    (r'\.proj\.conv\.', '.proj.1.'), (r'\.proj\.bn\.', '.proj.2.'),
]


def official_v2_key(key: str) -> str:
    """timm V2 key -> the authors' (nn.Sequential conv/BN pairs, Embedding proj/norm or conv/bn)."""
    key = re.sub(r'^stem\.conv(\d)\.(conv|bn)\.',
                 lambda m: f'patch_embed.{3 * (int(m[1]) - 1) + (m[2] == "bn")}.', key)
    m = re.match(r'^stages\.(\d+)\.downsample\.conv\.(conv|bn)\.(.*)$', key)
    if m:
        names = ('conv', 'bn') if int(m[1]) >= 3 else ('proj', 'norm')
        return f'network.{2 * int(m[1]) - 1}.{names[m[2] == "bn"]}.{m[3]}'
    key = re.sub(r'^stages\.(\d+)\.downsample\.', lambda m: f'network.{2 * int(m[1]) - 1}.', key)
    key = re.sub(r'^stages\.(\d+)\.blocks\.', lambda m: f'network.{2 * int(m[1])}.', key)
    for pattern, replacement in _OFFICIAL_V2_INNER:
        key, count = re.subn(pattern, replacement, key, count=1)
        if count:
            break
    key = re.sub(r'\.ls(\d)\.gamma$', r'.layer_scale_\1', key)
    return key.replace('head_dist.', 'dist_head.')


def official_v2_state_dict(timm_state: dict) -> OrderedDict:
    return OrderedDict((official_v2_key(k), v.view(-1, 1, 1) if k.endswith('gamma') else v)
                       for k, v in timm_state.items())


def official_offset_index(key_side: int, query_side: int = None) -> torch.Tensor:
    """The authors' ``attention_bias_idxs_seg``: offsets numbered in order of first appearance."""
    query_side = query_side or key_side
    step = math.ceil(key_side / query_side)
    keys = list(itertools.product(range(key_side), range(key_side)))
    offsets, idxs = {}, []
    for p1 in itertools.product(range(query_side), range(query_side)):
        for p2 in keys:
            offset = (abs(p1[0] * step - p2[0]), abs(p1[1] * step - p2[1]))
            idxs.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(idxs).view(query_side**2, key_side**2)


def official_dense_bias(table: torch.Tensor, index: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    return F.interpolate(table[:, index].unsqueeze(0), size=attn.shape[-2:], mode='bicubic')


def use_official_dense_v1_attention(attn_module: nn.Module, table: torch.Tensor) -> None:
    """Make a timm V1 attention compute as the authors' detection backbone does."""
    index = official_offset_index(int(table.shape[1]**0.5))

    def forward(x):
        B, N, _ = x.shape
        q, k, v = attn_module.qkv(x).reshape(B, N, attn_module.num_heads, -1).split(
            [attn_module.key_dim, attn_module.key_dim, attn_module.val_dim], dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * attn_module.scale
        attn = (attn + official_dense_bias(table, index, attn)).softmax(dim=-1)
        return attn_module.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))

    attn_module.forward = forward


def use_official_dense_v2_attention(attn_module: nn.Module, table: torch.Tensor) -> None:
    """Make a timm Attention2d / Attention2dDownsample compute as the authors' dense backbones do."""
    side = int(table.shape[1]**0.5)
    downsample = not hasattr(attn_module, 'talking_head1')
    index = official_offset_index(side, math.ceil(side / 2) if downsample else side)
    heads = attn_module.num_heads

    def forward(x):
        B, _, H, W = x.shape
        if not downsample and attn_module.stride_conv is not None:
            x = attn_module.stride_conv(x)
            H, W = H // 2, W // 2
        queries = H * W // 4 if downsample else H * W
        q = attn_module.q(x).flatten(2).reshape(B, heads, -1, queries).permute(0, 1, 3, 2)
        k = attn_module.k(x).flatten(2).reshape(B, heads, -1, H * W)
        v = attn_module.v(x)
        v_local = attn_module.v_local(v)
        v = v.flatten(2).reshape(B, heads, -1, H * W).permute(0, 1, 3, 2)
        attn = (q @ k) * attn_module.scale
        attn = attn + official_dense_bias(table, index, attn)
        if downsample:
            out = (attn.softmax(dim=-1) @ v).transpose(2, 3).reshape(B, attn_module.dh, H // 2, W // 2) + v_local
        else:
            attn = attn_module.talking_head2(attn_module.talking_head1(attn).softmax(dim=-1))
            out = (attn @ v).transpose(2, 3).reshape(B, attn_module.dh, H, W) + v_local
            if attn_module.upsample is not None:
                out = attn_module.upsample(out)
        return attn_module.proj(attn_module.act(out))

    attn_module.forward = forward


def save(tmp_path: Path, name: str, state_dict: dict) -> str:
    path = str(tmp_path / name)
    torch.save({'state_dict': state_dict}, path)
    return path


def load_through_init_cfg(model_cls, checkpoint: str, **kwargs) -> nn.Module:
    model = model_cls(init_cfg=dict(type='Pretrained', checkpoint=checkpoint), **kwargs)
    model.init_weights()
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Same weights, same function as timm at 224x224 (timm's fixed 7x7 bias grid).

@pytest.mark.parametrize('arch', V1_ARCHS)
def test_v1_matches_timm(arch):
    reference = timm_v1(arch)
    model = EfficientFormer(arch=arch, bias_mode='geometric', out_norm_cfg=None).eval()
    model.load_state_dict(convert_efficientformer_keys(reference.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_features_close(model(x), reference.forward_intermediates(x, intermediates_only=True))


@pytest.mark.parametrize('arch', V2_ARCHS)
def test_v2_matches_timm(arch):
    reference = timm_v2(arch)
    model = EfficientFormerV2(arch=arch, bias_mode='geometric').eval()
    model.load_state_dict(convert_efficientformerv2_keys(reference.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_features_close(model(x), reference.forward_intermediates(x, intermediates_only=True))


def test_geometric_bias_is_the_classification_bias_at_7x7_and_resampled_elsewhere():
    reference_v1, reference_v2 = timm_v1('l1'), timm_v2('s0')
    model_v1 = EfficientFormer(arch='l1', bias_mode='geometric')
    model_v2 = EfficientFormerV2(arch='s0', bias_mode='geometric')
    model_v1.load_state_dict(convert_efficientformer_keys(reference_v1.state_dict()), strict=False)
    model_v2.load_state_dict(convert_efficientformerv2_keys(reference_v2.state_dict()), strict=False)
    ours = [m for m in [*model_v1.modules(), *model_v2.modules()] if hasattr(m, 'attention_bias')]
    references = [m for m in [*reference_v1.modules(), *reference_v2.modules()] if hasattr(m, 'attention_biases')]
    assert len(ours) == len(references) == 1 + 5  # L1: one attention block; S0: four and the downsampling
    with torch.no_grad():
        for module, reference in zip(ours, references):
            timm_bias = reference.attention_biases[:, reference.attention_bias_idxs]
            key_side = module.table_side
            query_side = math.ceil(key_side / module.query_stride)
            assert torch.equal(module.attention_bias((query_side, query_side), (key_side, key_side)), timm_bias)
            # On a larger grid the table is resampled over offsets: offset (0, 0) and the largest
            # offset keep their trained values, offsets in between are interpolated.
            query_hw = (6, 9) if module.query_stride == 2 else (11, 17)
            bias = module.attention_bias(query_hw, (11, 17))
            table = reference.attention_biases.view(-1, key_side, key_side)
            torch.testing.assert_close(bias[:, 0, 0], table[:, 0, 0])
            if module.query_stride == 1:
                torch.testing.assert_close(bias[:, 0, -1], table[:, -1, -1])
                assert not torch.equal(bias[:, 0, 1], table[:, 0, 1])


# ----------------------------------------------------------------------------------------------
# bias_mode='official_dense' reproduces the authors' dense backbones on their checkpoints.

def test_v1_official_dense_checkpoint_gives_the_authors_outputs(tmp_path):
    reference = timm_v1('l1')
    heads, side = 8, 25  # the authors' detection tables: resolution 25
    seg_tables, dense = {}, OrderedDict()
    for key, value in reference.state_dict().items():
        dense['backbone.' + official_v1_key(key)] = value
    for name, module in reference.named_modules():
        if hasattr(module, 'attention_biases'):
            seg_tables[name] = torch.randn(heads, side * side)
            dense['backbone.' + official_v1_key(f'{name}.attention_biases_seg')] = seg_tables[name]
            dense['backbone.' + official_v1_key(f'{name}.attention_bias_idxs_seg')] = official_offset_index(side)
            use_official_dense_v1_attention(module, seg_tables[name])
    out_norms = [randomize(nn.GroupNorm(1, c)).eval() for c in (48, 96, 224, 448)]
    for i, norm in enumerate(out_norms):
        dense[f'backbone.norm{2 * i}.weight'], dense[f'backbone.norm{2 * i}.bias'] = norm.weight, norm.bias
    dense['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)  # the rest of a detector is ignored

    model = load_through_init_cfg(EfficientFormer, save(tmp_path, 'mask_rcnn_l1.pth', dense), arch='l1')
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        expected = [norm(f) for norm, f in zip(out_norms, reference.forward_intermediates(x, intermediates_only=True))]
        assert_features_close(model(x), expected)


def test_v2_official_dense_checkpoint_gives_the_authors_outputs(tmp_path):
    reference = timm_v2('s0')
    dense = OrderedDict(('backbone.' + k, v) for k, v in official_v2_state_dict(reference.state_dict()).items())
    # The authors' segmentation backbone (resolution=512): 16x16 tables in the blocks, 32x32 for downsampling.
    for name, module in reference.named_modules():
        if hasattr(module, 'attention_biases'):
            side = 32 if name.endswith('downsample.attn') else 16
            table = torch.randn(8, side * side)
            dense['backbone.' + official_v2_key(name + '.attention_biases_seg')] = table
            use_official_dense_v2_attention(module, table)
    model = load_through_init_cfg(EfficientFormerV2, save(tmp_path, 'fpn_s0.pth', dense), arch='s0',
                                  dense_img_size=512)
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        assert_features_close(model(x), reference.forward_intermediates(x, intermediates_only=True))


def test_official_dense_starts_from_zero_tables_with_a_classification_checkpoint(tmp_path):
    reference = timm_v1('l1')
    path = save(tmp_path, 'official_l1.pth', OrderedDict((official_v1_key(k), v)
                                                         for k, v in reference.state_dict().items()))
    model = load_through_init_cfg(EfficientFormer, path, arch='l1')
    tables = [p for n, p in model.named_parameters() if n.endswith('attention_biases_seg')]
    assert tables and all(t.shape == (8, 625) and not t.any() for t in tables)
    stem = reference.state_dict()['stem.conv1.weight']
    assert torch.equal(model.state_dict()['stem.conv1.weight'], stem)


# ----------------------------------------------------------------------------------------------
# Checkpoint formats: the authors', timm's and mmpretrain's load through init_cfg.

@pytest.mark.parametrize('layout', ['official', 'mmpretrain'])
def test_v1_checkpoint_layouts_load(tmp_path, layout):
    reference = timm_v1('l1')
    state = reference.state_dict()
    if layout == 'official':
        state = OrderedDict(('module.' + official_v1_key(k), v) for k, v in state.items())
    elif layout == 'mmpretrain':
        state = OrderedDict(('backbone.' + mmpretrain_v1_key(k), v) for k, v in state.items()
                            if not k.startswith('head'))
        state['head.fc.weight'] = torch.zeros(1)
    path = save(tmp_path, f'{layout}.pth', state)
    if layout == 'official':
        # As the authors' training script saves it: weights under 'model', next to its argparse arguments,
        # which `import plugin` allow-lists for torch's weights-only loader.
        torch.save({'model': state, 'args': argparse.Namespace(model='efficientformer_l1')}, path)
    model = load_through_init_cfg(EfficientFormer, path, arch='l1', bias_mode='geometric', out_norm_cfg=None)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_features_close(model(x), reference.forward_intermediates(x, intermediates_only=True))


def test_v2_official_checkpoint_loads_and_offline_conversion_matches(tmp_path):
    reference = timm_v2('s0')
    source = save(tmp_path, 'official_s0.pth', official_v2_state_dict(reference.state_dict()))
    spec = importlib.util.spec_from_file_location('convert_checkpoint', TOOLS / 'convert_checkpoint.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    converted = str(tmp_path / 'converted.pth')
    tool.main(['--model', 'efficientformerv2', source, converted])

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        for path in (source, converted):
            model = load_through_init_cfg(EfficientFormerV2, path, arch='s0', bias_mode='geometric')
            assert_features_close(model(x), expected)
    saved = torch.load(converted, weights_only=True)['state_dict']
    assert 'stages.3.downsample.attn.q.local.weight' in saved and not any('network' in k for k in saved)


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    state = convert_efficientformer_keys(timm_v1('l1').state_dict())
    state.pop('stages.2.blocks.1.mlp.fc1.weight')
    state['stages.2.blocks.1.mlp.extra.weight'] = torch.zeros(1)
    state['stem.conv2.weight'] = torch.zeros(3)
    model = EfficientFormer(arch='l1', bias_mode='geometric',
                            init_cfg=dict(type='Pretrained', checkpoint=save(tmp_path, 'bad.pth', state)))
    with pytest.raises(ValueError) as error:
        model.init_weights()
    message = str(error.value)
    assert 'missing keys: stages.2.blocks.1.mlp.fc1.weight' in message
    assert 'unexpected keys: stages.2.blocks.1.mlp.extra.weight' in message
    assert 'stem.conv2.weight (3,) (model: (48, 24, 3, 3))' in message

    # A V2 checkpoint for a V1 model: one error, with counts, not a traceback per key.
    model = EfficientFormer(arch='l1', init_cfg=dict(type='Pretrained', checkpoint=save(
        tmp_path, 'v2.pth', timm_v2('s0').state_dict())))
    with pytest.raises(ValueError, match=r'\d+ missing keys: .*more\)'):
        model.init_weights()


def test_dense_checkpoint_in_geometric_mode_says_which_mode_fits(tmp_path):
    model = EfficientFormer(arch='l1')  # official_dense
    path = save(tmp_path, 'ours_dense.pth', OrderedDict(('backbone.' + k, v) for k, v in model.state_dict().items()))
    geometric = EfficientFormer(arch='l1', bias_mode='geometric', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match="use bias_mode='official_dense'"):
        geometric.init_weights()


# ----------------------------------------------------------------------------------------------
# Dense prediction: any input size, freezing, checkpointing, Conv-BN folding, argument errors.

@pytest.mark.parametrize('model_cls,arch,bias_mode', [
    *[(EfficientFormer, arch, 'official_dense') for arch in V1_ARCHS],
    *[(EfficientFormerV2, arch, 'official_dense') for arch in V2_ARCHS],
    (EfficientFormer, 'l1', 'geometric'),
    (EfficientFormerV2, 's0', 'geometric'),
])
def test_odd_input_size(model_cls, arch, bias_mode):
    model = model_cls(arch=arch, bias_mode=bias_mode).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 333, 517))
    # Every conv halves with ceil: 333x517 -> 167x259 -> 84x130 -> 42x65 -> 21x33 -> 11x17.
    assert [tuple(o.shape[-2:]) for o in outs] == [(84, 130), (42, 65), (21, 33), (11, 17)]
    assert all(torch.isfinite(o).all() for o in outs)
    attention = [m for m in model.modules() if hasattr(m, 'attention_bias')]
    # The last stage attends on its 11x17 grid (V1 and V2), V2's third stage on a 11x17 stride-2 copy.
    assert attention and all(m._cached_bias[0][1] == (11, 17) for m in attention if m.query_stride == 1)


@pytest.mark.parametrize('model_cls,arch', [(EfficientFormer, 'l1'), (EfficientFormerV2, 's0')])
def test_empty_batch(model_cls, arch):
    model = model_cls(arch=arch).eval()
    with torch.no_grad():
        empty, single = model(torch.randn(0, 3, 97, 130)), model(torch.randn(1, 3, 97, 130))
    assert [tuple(o.shape) for o in empty] == [(0, *o.shape[1:]) for o in single]


@pytest.mark.parametrize('model_cls,arch', [(EfficientFormer, 'l1'), (EfficientFormerV2, 's0')])
@pytest.mark.parametrize('bias_mode', ['official_dense', 'geometric'])
def test_bias_tables_get_gradients_at_odd_sizes(model_cls, arch, bias_mode):
    model = model_cls(arch=arch, bias_mode=bias_mode).train()
    sum(o.mean() for o in model(torch.randn(1, 3, 65, 97))).backward()
    tables = [p for n, p in model.named_parameters() if 'attention_biases' in n]
    assert tables and all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)


def tiny(model_cls, **kwargs):
    dims = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 2))
    if model_cls is EfficientFormerV2:
        dims['mlp_ratios'] = (2, 2, 2, 2)
    return randomize(model_cls(**dims, num_vit=1, **kwargs))


def train_step(model):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 96)))
    loss.backward()
    optimizer.step()


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize('model_cls', [EfficientFormer, EfficientFormerV2])
def test_frozen_stages_and_norm_eval_freeze_parameters_and_statistics(model_cls):
    model = tiny(model_cls, frozen_stages=2, norm_eval=True)
    before = snapshot(model)
    train_step(model)
    changed_keys = changed(before, model)
    frozen = [k for k in before if re.match(r'(stem|stages\.[01]|norm[01])\.', k)]
    statistics = [k for k in before if k.endswith(('running_mean', 'running_var'))]
    assert frozen and not changed_keys & set(frozen)
    assert not changed_keys & set(statistics)
    assert any(k.startswith('stages.3.') and k.endswith('weight') for k in changed_keys)

    # Without norm_eval, the trainable stages' statistics do move, the frozen ones' do not.
    model = tiny(model_cls, frozen_stages=2)
    before = snapshot(model)
    train_step(model)
    moved = changed(before, model) & set(statistics)
    assert any(k.startswith('stages.3.') for k in moved) and not moved & set(frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize('model_cls', [EfficientFormer, EfficientFormerV2])
def test_with_cp_gives_the_same_gradients(model_cls):
    x = torch.randn(2, 3, 64, 96)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(1)
        model = tiny(model_cls, with_cp=with_cp).train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize('model_cls,arch', [(EfficientFormer, 'l1'), (EfficientFormerV2, 's1')])
def test_fuse_folds_every_batchnorm_and_keeps_the_outputs(model_cls, arch):
    model = randomize(model_cls(arch=arch)).eval()
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        expected = model(x)
        with pytest.raises(RuntimeError, match='eval'):
            model.train().fuse()
        fused = model.eval().fuse()
        assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
        assert_features_close(fused(x), expected, atol=1e-4)


def test_configuration_errors_are_readable():
    with pytest.raises(ValueError, match=r"arch must be one of \['l1', 'l3', 'l7'\].*'l2'"):
        EfficientFormer(arch='l2')
    with pytest.raises(ValueError, match=r"arch must be one of \['l', 's0', 's1', 's2'\].*'S0'"):
        EfficientFormerV2(arch='S0')
    with pytest.raises(ValueError, match=r"bias_mode must be one of .*'relative'"):
        EfficientFormer(bias_mode='relative')
    with pytest.raises(ValueError, match=r'out_indices must be .*\(0, 4\)'):
        EfficientFormerV2(out_indices=(0, 4))
    with pytest.raises(ValueError, match=r'frozen_stages must lie in \[-1, 4\]'):
        EfficientFormer(frozen_stages=5)
    with pytest.raises(ValueError, match=r'num_vit must lie in \[0, depths\[-1\]=4\]'):
        EfficientFormer(num_vit=5)
    with pytest.raises(ValueError, match='one ratio per block'):
        EfficientFormerV2(mlp_ratios=(4, 4, (4, 4), 4))
    # V2's attention blocks are the last num_vit of stages 3 and 4: more than either has is refused, not clamped.
    with pytest.raises(ValueError, match=r'num_vit must lie in \[0, 4\].*stages 3 and 4 \(depths \(6, 4\)\), got 5'):
        EfficientFormerV2(num_vit=5)
    # An explicit argument that contradicts arch is refused instead of silently overridden.
    with pytest.raises(ValueError, match=r"arch='l1' sets embed_dims=\(48, 96, 224, 448\), but embed_dims=\(32,"):
        EfficientFormer(arch='l1', embed_dims=(32, 64, 128, 256))
    assert EfficientFormer(arch='l3', num_vit=4).stages[-1].num_conv_blocks == 2
