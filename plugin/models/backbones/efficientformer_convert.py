"""Key conversion of published checkpoints for the EfficientFormer backbones.

Loading itself is ``plugin.models.utils.checkpoint``'s.

Our state-dict keys are timm's (``stem.*``, ``stages.{i}.downsample.*``,
``stages.{i}.blocks.{j}.*``), except that the last stage's blocks are numbered
without the parameter-free ``Flat`` module that timm and the authors keep in it,
and that the output norms are ``norm{i}`` for stage ``i``. The converters below
turn the other published layouts into ours:

- the authors' classification checkpoints (snap-research/EfficientFormer,
  ``patch_embed.*``/``network.*``) and their Mask R-CNN / Semantic FPN ones
  (the same, under ``backbone.``, with ``attention_biases_seg`` and ``norm0/2/4/6``);
- timm's (``efficientformer_l1`` ..., ``efficientformerv2_s0`` ...);
- mmpretrain's ``EfficientFormer`` (V1 only; mmpretrain has no V2).

Classification heads and the classification norm are dropped, and so are the
attention index buffers, which our modules compute for each input size.
"""
import re
from collections import OrderedDict
from collections.abc import Callable

from timm.models.efficientformer import checkpoint_filter_fn as timm_v1_checkpoint_filter_fn

from ..utils.checkpoint import StateDict

# Keys no backbone of ours has: classifier heads, the classification norm, index buffers.
_DROPPED_KEY = re.compile(r'^(norm|head|head_dist|dist_head)\.|(^|\.)attention_bias_idxs(_seg)?$')
_BLOCK_KEY = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.')


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply the first rule whose pattern occurs in ``key``."""
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new_key
    return key


def _renumber_last_stage(state_dict: StateDict) -> StateDict:
    """Number the last stage's blocks 0, 1, ... in order.

    timm and the authors keep a parameter-free ``Flat`` module among the last
    stage's blocks, which leaves a gap in their numbering; ours has none.
    """
    matches = [_BLOCK_KEY.match(key) for key in state_dict]
    stages = [int(m[1]) for m in matches if m]
    if not stages:
        return state_dict
    last = max(stages)
    blocks = sorted({int(m[2]) for m in matches if m and int(m[1]) == last})
    rank = {index: new_index for new_index, index in enumerate(blocks)}

    def renumber(m: re.Match) -> str:
        stage, block = int(m[1]), int(m[2])
        return f'stages.{stage}.blocks.{rank[block] if stage == last else block}.'

    return OrderedDict((_BLOCK_KEY.sub(renumber, key), value) for key, value in state_dict.items())


_MMPRETRAIN_V1_RULES = [
    (r'^patch_embed\.0\.conv\.', 'stem.conv1.'),
    (r'^patch_embed\.0\.bn\.', 'stem.norm1.'),
    (r'^patch_embed\.1\.conv\.', 'stem.conv2.'),
    (r'^patch_embed\.1\.bn\.', 'stem.norm2.'),
    (r'^network\.(\d+)\.0\.conv\.', r'stages.\1.downsample.conv.'),
    (r'^network\.(\d+)\.0\.bn\.', r'stages.\1.downsample.norm.'),
    (r'^network\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
]


def _convert_mmpretrain_v1(state_dict: StateDict) -> StateDict:
    converted = OrderedDict()
    for key, value in state_dict.items():
        # mmpretrain's norm{i} are classification norms (a LayerNorm on the last stage).
        if re.match(r'^norm\d+\.', key):
            continue
        key = _rename(key, _MMPRETRAIN_V1_RULES)
        key = re.sub(r'\.ls(\d)\.weight$', r'.ls\1.gamma', key)
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', key)
        if m and int(m[1]) > 0:
            # Stages after the first hold their downsampling conv at index 0.
            key = f'stages.{m[1]}.blocks.{int(m[2]) - 1}.{m[3]}'
        converted[key] = value
    return converted


def convert_efficientformer_keys(state_dict: StateDict) -> StateDict:
    """EfficientFormer (V1) backbone weights in any published layout -> our keys."""
    if 'patch_embed.0.conv.weight' in state_dict:
        state_dict = _convert_mmpretrain_v1(state_dict)
    elif any(key.startswith('network.') for key in state_dict):
        state_dict = timm_v1_checkpoint_filter_fn(state_dict, None)
        # The authors name their output norms after network indices 0, 2, 4, 6.
        state_dict = OrderedDict((re.sub(r'^norm(\d+)\.', lambda m: f'norm{int(m[1]) // 2}.', key), value)
                                 for key, value in state_dict.items())
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if not _DROPPED_KEY.search(k))
    return _renumber_last_stage(state_dict)


def _official_v2_stage_prefix(m: re.Match) -> str:
    """The authors' ``network.{n}``: even n = blocks of stage n/2, odd n = downsampling into stage (n+1)/2."""
    index = int(m[1])
    return f'stages.{index // 2}.blocks.' if index % 2 == 0 else f'stages.{(index + 1) // 2}.downsample.'


# Inner renames from the authors' V2 modules (nn.Sequential conv/BN pairs, separate
# mlp norms, an activation leading ``proj``) to timm's ConvNorm/ConvNormAct names.
# One rule applies per key; the order settles overlaps (``q.proj`` before ``proj``).
_OFFICIAL_V2_RULES = [
    (r'\.mlp\.fc1\.', '.mlp.fc1.conv.'),
    (r'\.mlp\.norm1\.', '.mlp.fc1.bn.'),
    (r'\.mlp\.mid\.', '.mlp.mid.conv.'),
    (r'\.mlp\.mid_norm\.', '.mlp.mid.bn.'),
    (r'\.mlp\.fc2\.', '.mlp.fc2.conv.'),
    (r'\.mlp\.norm2\.', '.mlp.fc2.bn.'),
    (r'\.q\.local\.0\.', '.q.local.'),
    (r'\.q\.proj\.0\.', '.q.proj.conv.'),
    (r'\.q\.proj\.1\.', '.q.proj.bn.'),
    (r'\.(q|k|v|v_local|stride_conv)\.0\.', r'.\1.conv.'),
    (r'\.(q|k|v|v_local|stride_conv)\.1\.', r'.\1.bn.'),
    (r'\.proj\.1\.', '.proj.conv.'),
    (r'\.proj\.2\.', '.proj.bn.'),
    (r'\.layer_scale_(\d)$', r'.ls\1.gamma'),
    (r'\.downsample\.(proj|conv)\.', '.downsample.conv.conv.'),
    (r'\.downsample\.(norm|bn)\.', '.downsample.conv.bn.'),
]
_OFFICIAL_V2_STEM = {'patch_embed.0.': 'stem.conv1.conv.', 'patch_embed.1.': 'stem.conv1.bn.',
                     'patch_embed.3.': 'stem.conv2.conv.', 'patch_embed.4.': 'stem.conv2.bn.'}


def convert_efficientformerv2_keys(state_dict: StateDict) -> StateDict:
    """EfficientFormerV2 backbone weights in any published layout -> our keys."""
    if any(key.startswith('network.') for key in state_dict):
        converted = OrderedDict()
        for key, value in state_dict.items():
            for old, new in _OFFICIAL_V2_STEM.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            key = re.sub(r'^network\.(\d+)\.', _official_v2_stage_prefix, key)
            key = _rename(key, _OFFICIAL_V2_RULES)
            if key.endswith(('.ls1.gamma', '.ls2.gamma')):
                value = value.reshape(-1)  # the authors store (C, 1, 1)
            converted[key] = value
        state_dict = converted
    return OrderedDict((k, v) for k, v in state_dict.items() if not _DROPPED_KEY.search(k))


KEY_CONVERTERS: dict[str, Callable[[StateDict], StateDict]] = {
    'efficientformer': convert_efficientformer_keys,
    'efficientformerv2': convert_efficientformerv2_keys,
}
