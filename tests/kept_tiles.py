"""Kept tiles for the sparse neck and head tests: random per image, every tile, and a masked GroupNorm reference."""
from collections.abc import Sequence

import torch
import torch.nn as nn

from plugin.models.utils.records import KeptTiles


def random_tiles(batch: int, feature_shape: Sequence[int], tile_size: int, kept: int,
                 generator: torch.Generator) -> KeptTiles:
    """``kept`` tiles per image drawn without replacement, in a random order (as a ranking gives them)."""
    probe = KeptTiles(torch.zeros(batch, 0, dtype=torch.long), tile_size, tuple(feature_shape))
    index = torch.stack([torch.randperm(probe.num_tiles, generator=generator)[:kept] for _ in range(batch)])
    return KeptTiles(index, tile_size, tuple(feature_shape))


def every_tile(batch: int, feature_shape: Sequence[int], tile_size: int) -> KeptTiles:
    probe = KeptTiles(torch.zeros(batch, 0, dtype=torch.long), tile_size, tuple(feature_shape))
    return KeptTiles(torch.arange(probe.num_tiles).repeat(batch, 1), tile_size, tuple(feature_shape))


def masked_group_norm_reference(norm: nn.GroupNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GroupNorm whose statistics, per image and group, are the mean and variance of the values at ``mask``."""
    out = torch.empty_like(x)
    per_group = x.shape[1] // norm.num_groups
    for image in range(x.shape[0]):
        for group in range(norm.num_groups):
            channels = slice(group * per_group, (group + 1) * per_group)
            values = x[image, channels][:, mask[image]]
            mean, variance = values.mean(), values.var(unbiased=False)
            out[image, channels] = (x[image, channels] - mean) / torch.sqrt(variance + norm.eps)
    return out * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
