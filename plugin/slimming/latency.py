"""Latency lookup table of EfficientFormer's candidate blocks, and sub-network prediction from it.

A sub-network's latency is predicted as the sum of its parts measured alone:
stem, downsampling layers, 4D and 3D MetaBlocks and output norms, each at its
width and feature-map size (batch 1). Keys name all three, e.g.
``'block4d 48 @16x16'``, so equal parts of different stages share one entry.
"""
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
from timm.models.efficientformer import Downsample, MetaBlock2d, Stem4

from ..models.backbones.efficientformer import (
    AttentionMetaBlock,
    EfficientFormer,
    conv_block_counts,
    last_stage_table_side,
)
from ..utils import device_name, median_latency_ms

# EfficientFormer's defaults (the detection bias table over 4 stages), so that the table measures the
# blocks the slimmed config builds.
BIAS_MODE = 'official_dense'
TABLE_SIDE = last_stage_table_side(800, num_stages=4)


def stage_sizes(input_size: Sequence[int], num_stages: int) -> list[tuple[int, int]]:
    """Feature-map size of each stage: stride 4 after the stem, then halved (rounded up) per stage."""
    height, width = (math.ceil(math.ceil(side / 2) / 2) for side in input_size)
    sizes = [(height, width)]
    for _ in range(num_stages - 1):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        sizes.append((height, width))
    return sizes


def _size(hw: Sequence[int]) -> str:
    return f'{hw[0]}x{hw[1]}'


def subnet_entries(embed_dims: Sequence[int], num_conv: Sequence[int], num_vit: int,
                   input_size: Sequence[int], in_channels: int = 3) -> list[str]:
    """Lookup-table keys of every part of a network, one key per block (so repeated keys add up).

    Args:
        embed_dims: Width per stage.
        num_conv: 4D MetaBlocks per stage.
        num_vit: 3D MetaBlocks at the end of the last stage.
        input_size: Image (H, W).
    """
    sizes = stage_sizes(input_size, len(embed_dims))
    keys = [f'stem {in_channels}->{embed_dims[0]} @{_size(input_size)}']
    for i, (width, size) in enumerate(zip(embed_dims, sizes)):
        if i > 0:
            keys.append(f'downsample {embed_dims[i - 1]}->{width} @{_size(sizes[i - 1])}')
        keys += [f'block4d {width} @{_size(size)}'] * num_conv[i]
        keys.append(f'out_norm {width} @{_size(size)}')
    keys += [f'block3d {embed_dims[-1]} @{_size(sizes[-1])}'] * num_vit
    return keys


def candidate_entries(space: dict, input_size: Sequence[int]) -> list[str]:
    """Every distinct key any sub-network of ``space`` (``width_choices``, ``depths``, ``num_vit``) can use."""
    choices = space['width_choices']
    sizes = stage_sizes(input_size, len(choices))
    keys = [f'stem 3->{w} @{_size(input_size)}' for w in choices[0]]
    for i, widths in enumerate(choices):
        if i > 0:
            keys += [f'downsample {w_in}->{w} @{_size(sizes[i - 1])}' for w_in in choices[i - 1] for w in widths]
        keys += [f'block4d {w} @{_size(sizes[i])}' for w in widths]
        keys += [f'out_norm {w} @{_size(sizes[i])}' for w in widths]
    if space['num_vit'] > 0:
        keys += [f'block3d {w} @{_size(sizes[-1])}' for w in choices[-1]]
    return list(dict.fromkeys(keys))


def _entry_module(key: str) -> tuple[nn.Module, tuple]:
    """The module an entry measures and its (batch-1) input."""
    kind, channels, at = key.split(' ')
    height, width = (int(v) for v in at[1:].split('x'))
    if '->' in channels:
        in_channels, out_channels = (int(c) for c in channels.split('->'))
        module = Stem4(in_channels, out_channels) if kind == 'stem' else Downsample(in_channels, out_channels)
        return module, (torch.rand(1, in_channels, height, width),)
    dim = int(channels)
    if kind == 'block4d':
        return MetaBlock2d(dim), (torch.rand(1, dim, height, width),)
    if kind == 'block3d':
        return AttentionMetaBlock(dim, BIAS_MODE, TABLE_SIDE), (torch.rand(1, height * width, dim), (height, width))
    if kind == 'out_norm':
        return nn.GroupNorm(1, dim), (torch.rand(1, dim, height, width),)
    raise ValueError(f'unknown lookup-table entry {key!r}')


def build_latency_lut(space: dict, input_size: Sequence[int], device: str = 'cpu', warmup: int = 3,
                      repeats: int = 10,
                      progress: Callable[[Iterable[str]], Iterable[str]] | None = None) -> dict:
    """Measure every candidate of ``space`` on ``device``: median of ``repeats`` after ``warmup`` runs.

    Returns:
        dict: ``device``, ``torch`` (version), ``threads``, ``input_size``, ``space``, ``warmup``, ``repeats`` and
        ``entries`` (key -> milliseconds), ready for ``json.dump``.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f'warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}')
    device = torch.device(device)
    keys = candidate_entries(space, input_size)
    entries = {}
    for key in (progress(keys) if progress else keys):
        module, inputs = _entry_module(key)
        module = module.eval().to(device)
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
        entries[key] = median_latency_ms(lambda: module(*inputs), device, warmup, repeats)
    return dict(device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads(),
                input_size=list(input_size),
                space=space, warmup=warmup, repeats=repeats, entries=entries)


def predict_latency(lut: dict, keys: Sequence[str]) -> float:
    """Predicted latency (ms): the sum of the table's entries for ``keys``."""
    missing = sorted(set(keys) - set(lut['entries']))
    if missing:
        raise ValueError(f'the lookup table has no entry for {missing}: rebuild it for this search space '
                         f'and input size (tools/build_latency_lut.py)')
    return sum(lut['entries'][key] for key in keys)


def predict_config_latency(lut: dict, config: dict) -> float:
    """Predicted latency (ms) of ``EfficientFormer(**config)`` at the table's input size."""
    num_conv = conv_block_counts(config['depths'], config['num_vit'])
    return predict_latency(lut, subnet_entries(config['embed_dims'], num_conv, config['num_vit'],
                                               lut['input_size']))


def measure_config_latency(config: dict, input_size: Sequence[int], device: str = 'cpu', warmup: int = 3,
                           repeats: int = 10) -> float:
    """Measured median latency (ms) of a whole ``EfficientFormer(**config)`` at batch 1."""
    device = torch.device(device)
    model = EfficientFormer(**config).eval().to(device)
    image = torch.rand(1, 3, *input_size, device=device)
    return median_latency_ms(lambda: model(image), device, warmup, repeats)
