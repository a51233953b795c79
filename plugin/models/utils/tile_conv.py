"""Convolutions computed only on the kept tiles of a feature map, and the features that carry those tiles.

A sparse backbone computes some windows (tiles) of each output map and copies the others through
(:class:`~plugin.models.utils.records.KeptTiles`). The sparse neck and heads compute their
convolutions on the same tiles: each kept tile is gathered with the halo that a ``k x k``
convolution reads around it (``k // 2`` pixels of its neighbours, zeros outside the map), the tiles
are convolved as one batch without padding, and the results are written back into a map whose
skipped tiles hold a fill value. A tile's output is therefore exactly the dense convolution's output
at its pixels, and the MACs follow the number of kept tiles.

Tiles move with index kernels whose positions come from tables cached per map size, so a forward pass
has static shapes, no host synchronisation, and exports. PyTorch moves them along the flat pixels of
each channel plane of the NCHW map (a ``(C, B * H * W)`` view), so the map it writes back is the NCHW
that mmdet's layers and mmcv's RoIAlign read: turning a channels-last map into NCHW costs PyTorch's 4-D CPU
copy 50-60 ms for a 256-channel stride-4 map at 672 (one thread), more than the whole scatter; a 2-D transpose
of its ``(H * W, C)`` rows takes 9 ms, which would leave rows and planes about even per layer (per-op timings,
one thread; not built). An exported graph moves
channels-last rows instead (one row per pixel): ONNX Runtime transposes fast and gathers and scatters
rows 4x faster than along planes.
"""
import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .export_mode import is_exporting
from .records import KeptTiles
from .window_ops import batched_token_positions, gather_rows, scatter_rows_

# From this kept fraction on a layer runs densely and then fills the skipped tiles, which gives the same
# result: gathering the tiles with their halo and writing them back costs more than the skipped
# convolutions save. Per kind of device (every device but the CPU takes 'gpu'), measured with
# ``python tools/benchmark.py sparse_heads --part layer`` (docs/sparse_all_the_way.md): on the CPU a 3x3
# convolution on tiles stops paying between 0.6 and 0.85 (depending on the machine); on an H200 GPU at about
# 0.3 for 4 to 16 images and at no fraction for one, where the gathers' launches cost more than the layer.
DENSE_FALLBACK_FRACTION: dict[str, float] = {'cpu': 0.85, 'gpu': 0.25}


class SparseFeatures(tuple):
    """A neck's output maps (a tuple, as mmdet's heads take it) with, per map, the tiles computed on it.

    ``kept_tiles[i]`` is None for a map computed everywhere (a dense level, an extra level such as
    FPN's P6); a sparse head computes only the kept tiles of the others.
    """
    kept_tiles: tuple[KeptTiles | None, ...]

    def __new__(cls, features: Sequence[torch.Tensor], kept_tiles: Sequence[KeptTiles | None]) -> 'SparseFeatures':
        features, kept_tiles = tuple(features), tuple(kept_tiles)
        if len(features) != len(kept_tiles):
            raise ValueError(f'SparseFeatures needs one kept-tiles entry (or None) per feature map: got '
                             f'{len(features)} maps and {len(kept_tiles)} entries')
        for level, (feature, tiles) in enumerate(zip(features, kept_tiles)):
            if tiles is not None:
                check_kept_tiles(tiles, feature, f'level {level}')
        obj = super().__new__(cls, features)
        obj.kept_tiles = kept_tiles
        return obj

    def __getnewargs__(self) -> tuple:
        # copy and pickle rebuild a tuple subclass through __new__ with these arguments.
        return tuple(self), self.kept_tiles


def kept_tiles_of(features: Sequence[torch.Tensor]) -> tuple[KeptTiles | None, ...]:
    """The kept tiles of each map of ``features``: a :class:`SparseFeatures`' own, all None for a plain tuple."""
    if isinstance(features, SparseFeatures):
        return features.kept_tiles
    return (None, ) * len(features)


def check_kept_tiles(tiles: KeptTiles, x: torch.Tensor, where: str) -> None:
    """Raise ValueError unless ``tiles`` describe the map ``x`` ``(B, C, H, W)``."""
    if tuple(tiles.feature_shape) != tuple(x.shape[-2:]):
        raise ValueError(f'{where}: the kept tiles describe a {tuple(tiles.feature_shape)} map but the feature map '
                         f'is {tuple(x.shape[-2:])}: pass the tiles of the map they come with (the backbone '
                         f'record\'s kept_tiles of its out_indices, in order)')
    if tiles.index.dim() != 2 or tiles.index.shape[0] != x.shape[0]:
        raise ValueError(f'{where}: the kept tiles index has shape {tuple(tiles.index.shape)}; a batch of '
                         f'{x.shape[0]} images needs (B={x.shape[0]}, kept tiles)')


def dense_pays(tiles: KeptTiles) -> bool:
    """True where a layer on ``tiles`` is cheaper computed densely and masked (see ``DENSE_FALLBACK_FRACTION``)."""
    device = 'cpu' if tiles.index.device.type == 'cpu' else 'gpu'
    return tiles.kept_fraction >= DENSE_FALLBACK_FRACTION[device]


# How a layer on kept tiles can run: on the gathered tiles, or on the whole map and then masked (the dense fallback).
COMPUTE_MODES = ('tiles', 'dense')


@contextlib.contextmanager
def computed_as(mode: str) -> Iterator[None]:
    """Inside the block every layer on kept tiles runs as ``mode`` (one of ``COMPUTE_MODES``) says, whatever its kept
    fraction and device: how the tests compare the two paths and the benchmark times them."""
    if mode not in COMPUTE_MODES:
        raise ValueError(f'computed_as takes one of {COMPUTE_MODES}, got {mode!r}')
    saved = dict(DENSE_FALLBACK_FRACTION)
    DENSE_FALLBACK_FRACTION.update(dict.fromkeys(saved, 0.0 if mode == 'dense' else 2.0))
    try:
        yield
    finally:
        DENSE_FALLBACK_FRACTION.update(saved)


def keep_computed(x: torch.Tensor, tiles: KeptTiles, fill: float | torch.Tensor) -> torch.Tensor:
    """``x`` on the kept tiles and ``fill`` (a number or a map like ``x``) on the others: the dense fallback's
    result, and what :func:`scatter_tiles` gives."""
    mask = tiles.mask().unsqueeze(1)
    # A number stays a Python scalar: a tensor made of it would be a host-to-device copy on every call.
    return torch.where(mask, x, fill.to(x.dtype) if isinstance(fill, torch.Tensor) else fill)


class TileTable(NamedTuple):
    """Positions of every tile of one map size, tile size and halo.

    patch_rows: ``(nT, (t + 2h)**2)`` positions of a tile and its halo in the flat map ``H * W``; a pixel
        outside the map takes a position inside it, and ``patch_inside`` marks it.
    patch_inside: ``(nT, (t + 2h)**2)`` True for the pixels of ``patch_rows`` inside the map; None when all are.
    pixel_rows: ``(nT, t * t)`` positions of a tile's pixels in the flat map padded to whole tiles, ``Hp * Wp``.
    inside: ``(nT, t * t)`` True for a pixel inside the map; None when the tiles cover it exactly.
    """
    patch_rows: torch.Tensor
    patch_inside: torch.Tensor | None
    pixel_rows: torch.Tensor
    inside: torch.Tensor | None


def padded_to_tiles(feature_shape: tuple[int, int], tile_size: int) -> tuple[int, int]:
    height, width = feature_shape
    return -(-height // tile_size) * tile_size, -(-width // tile_size) * tile_size


# Cached per map size, as the backbone's window tables: in eager mode they would cost a dozen small kernels per layer.
@functools.lru_cache(maxsize=128)
def build_tile_table(feature_shape: tuple[int, int], tile_size: int, halo: int, device: torch.device) -> TileTable:
    """The :class:`TileTable` of a ``feature_shape`` map cut into ``tile_size`` tiles (read-only, cached)."""
    height, width = feature_shape
    padded_height, padded_width = padded_to_tiles(feature_shape, tile_size)
    rows, cols = padded_height // tile_size, padded_width // tile_size
    tile_top = (torch.arange(rows, device=device) * tile_size).repeat_interleave(cols)
    tile_left = (torch.arange(cols, device=device) * tile_size).repeat(rows)
    side = torch.arange(tile_size + 2 * halo, device=device) - halo
    patch_y = tile_top[:, None, None] + side[None, :, None]
    patch_x = tile_left[:, None, None] + side[None, None, :]
    patch_rows = patch_y.clamp(0, height - 1) * width + patch_x.clamp(0, width - 1)
    patch_inside = None
    if halo > 0 or (padded_height, padded_width) != (height, width):
        patch_inside = ((patch_y >= 0) & (patch_y < height) & (patch_x >= 0) & (patch_x < width)).flatten(1)
    pixel = torch.arange(tile_size, device=device)
    pixel_y = tile_top[:, None, None] + pixel[None, :, None]
    pixel_x = tile_left[:, None, None] + pixel[None, None, :]
    pixel_rows = pixel_y * padded_width + pixel_x
    inside = None
    if (padded_height, padded_width) != (height, width):
        inside = ((pixel_y < height) & (pixel_x < width)).flatten(1)
    return TileTable(patch_rows.flatten(1), patch_inside, pixel_rows.flatten(1), inside)


def tile_table(tiles: KeptTiles, halo: int, device: torch.device) -> TileTable:
    # A compiled graph computes the (pure) table itself; eager mode reuses the cached one.
    build = build_tile_table.__wrapped__ if torch.compiler.is_compiling() else build_tile_table
    return build(tuple(tiles.feature_shape), tiles.tile_size, halo, device)


def channel_planes(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` as ``(C, N * H * W)``: a view for N = 1, a copy plane by plane otherwise."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def gather_tiles(x: torch.Tensor, tiles: KeptTiles, halo: int = 0) -> torch.Tensor:
    """The kept tiles of ``x`` ``(B, C, H, W)`` with ``halo`` pixels around each (zeros outside the map), as a
    batch ``(B * k, C, t + 2 * halo, t + 2 * halo)``, image by image in the order of ``tiles.index``."""
    batch, channels, height, width = x.shape
    table = tile_table(tiles, halo, x.device)
    positions = batched_token_positions(table.patch_rows[tiles.index], height * width)
    side = tiles.tile_size + 2 * halo
    # Zeros outside the map, as the dense convolution's padding: cheaper than padding the whole map.
    outside = None if table.patch_inside is None else ~table.patch_inside[tiles.index].reshape(-1)
    if is_exporting():
        patches = gather_rows(x.permute(0, 2, 3, 1).reshape(-1, channels), positions)
        if outside is not None:
            patches = patches.masked_fill_(outside.view(-1, 1), 0.)
        return patches.view(-1, side, side, channels).permute(0, 3, 1, 2)
    patches = channel_planes(x).index_select(1, positions)
    if outside is not None:
        patches = patches.masked_fill_(outside.view(1, -1), 0.)
    return patches.view(channels, -1, side, side).transpose(0, 1)


def scatter_tiles(values: torch.Tensor, tiles: KeptTiles, fill: float | torch.Tensor) -> torch.Tensor:
    """The map ``(B, C, H, W)`` holding ``values`` ``(B * k, C, t, t)`` (as :func:`gather_tiles` orders them) on
    the kept tiles and ``fill`` (a number, or a ``(B, C, H, W)`` map) on the others.

    In PyTorch the result is NCHW (contiguous for one image on a map of whole tiles, else a view of a
    ``(C, B, Hp, Wp)`` buffer); exported, a view of a channels-last buffer.
    """
    batch = tiles.index.shape[0]
    channels = values.shape[1]
    height, width = tiles.feature_shape
    padded_height, padded_width = padded_to_tiles(tiles.feature_shape, tiles.tile_size)
    pad = (0, padded_width - width, 0, padded_height - height)
    table = tile_table(tiles, 0, values.device)
    positions = batched_token_positions(table.pixel_rows[tiles.index], padded_height * padded_width)
    if is_exporting():
        if isinstance(fill, torch.Tensor) and not any(pad):
            buffer = fill.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).reshape(-1, channels)
        elif isinstance(fill, torch.Tensor):
            buffer = F.pad(fill.permute(0, 2, 3, 1), (0, 0) + pad).reshape(-1, channels)
        else:
            buffer = values.new_full((batch * padded_height * padded_width, channels), fill)
        scatter_rows_(buffer, positions, values.permute(0, 2, 3, 1).reshape(-1, channels))
        return buffer.view(batch, padded_height, padded_width, channels)[:, :height, :width].permute(0, 3, 1, 2)
    if isinstance(fill, torch.Tensor):
        planes = fill.transpose(0, 1)
        # F.pad without padding would keep the transposed strides, which a (C, B * H * W) view cannot take.
        buffer = F.pad(planes, pad) if any(pad) else planes.clone(memory_format=torch.contiguous_format)
    else:
        buffer = values.new_full((channels, batch, padded_height, padded_width), fill)
    buffer.view(channels, -1).index_copy_(1, positions, channel_planes(values).to(buffer.dtype))
    return buffer.transpose(0, 1)[:, :, :height, :width]


def inside_pixels(tiles: KeptTiles, device: torch.device) -> torch.Tensor | None:
    """``(B, k, t * t)`` True for the pixels of the kept tiles that lie inside the map; None when all do."""
    inside = tile_table(tiles, 0, device).inside
    return None if inside is None else inside[tiles.index]


def same_padding_halo(conv: nn.Module, where: str) -> int:
    """The halo of a stride-1 convolution whose padding keeps the map size (``dilation * (k - 1) / 2`` zeros)."""
    kernel = tuple(conv.kernel_size)
    dilation = tuple(conv.dilation)
    padding = tuple(conv.padding) if isinstance(conv.padding, tuple) else (conv.padding, ) * 2
    halos = {d * (k - 1) // 2 for k, d in zip(kernel, dilation)}
    stride = tuple(conv.stride) if isinstance(conv.stride, tuple) else (conv.stride, ) * 2
    if (any(k % 2 == 0 for k in kernel) or len(halos) != 1 or padding != (next(iter(halos)), ) * 2
            or stride != (1, 1) or getattr(conv, 'padding_mode', 'zeros') != 'zeros'):
        raise ValueError(f'{where}: a convolution on kept tiles must keep the map size: odd square kernel, stride '
                         f'1, zero padding of dilation * (kernel - 1) / 2; got kernel {kernel}, stride {stride}, '
                         f'padding {padding}, dilation {dilation}, padding mode '
                         f'{getattr(conv, "padding_mode", "zeros")!r}')
    return next(iter(halos))


def conv_on_tiles(conv: nn.Conv2d, x: torch.Tensor, tiles: KeptTiles) -> torch.Tensor:
    """``conv(x)`` at the kept tiles' pixels only, ``(B * k, C', t, t)``."""
    halo = same_padding_halo(conv, type(conv).__name__)
    patches = gather_tiles(x, tiles, halo)
    return F.conv2d(patches, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)


def deform_conv_on_tiles(conv: nn.Module, x: torch.Tensor, tiles: KeptTiles) -> torch.Tensor:
    """mmcv's ``ModulatedDeformConv2dPack`` (DCNv2) at the kept tiles' pixels only, ``(B * k, C', t, t)``.

    mmcv's and torchvision's kernels compute every output pixel of a map; here the offsets and masks come
    from ``conv_offset`` on the tiles, each tile pixel samples its ``kh * kw`` points bilinearly from the
    whole map (zeros outside it, as mmcv), and one matrix product applies the weights.
    """
    if conv.groups != 1 or conv.deform_groups != 1:
        raise ValueError(f'a deformable convolution on kept tiles needs groups=1 and deform_groups=1, got '
                         f'groups={conv.groups}, deform_groups={conv.deform_groups}')
    same_padding_halo(conv, type(conv).__name__)
    batch, channels, height, width = x.shape
    kernel_h, kernel_w = conv.kernel_size
    points = kernel_h * kernel_w
    tile = tiles.tile_size
    offset_h, offset_w, mask = torch.chunk(conv_on_tiles(conv.conv_offset, x, tiles), 3, dim=1)
    # mmcv's layout: cat(o1, o2) holds (dy, dx) of kernel point p in channels 2p, 2p + 1.
    offset = torch.cat((offset_h, offset_w), dim=1)
    dy, dx = offset[:, 0::2], offset[:, 1::2]
    table = tile_table(tiles, 0, x.device)
    padded_width = padded_to_tiles(tiles.feature_shape, tile)[1]
    pixels = table.pixel_rows[tiles.index].view(-1, 1, tile, tile)
    pixel_y = torch.div(pixels, padded_width, rounding_mode='floor').to(x.dtype)
    pixel_x = (pixels % padded_width).to(x.dtype)
    kernel_y = (torch.arange(kernel_h, device=x.device) * conv.dilation[0] - conv.padding[0]).to(x.dtype)
    kernel_x = (torch.arange(kernel_w, device=x.device) * conv.dilation[1] - conv.padding[1]).to(x.dtype)
    sample_y = pixel_y + kernel_y.repeat_interleave(kernel_w).view(1, points, 1, 1) + dy
    sample_x = pixel_x + kernel_x.repeat(kernel_h).view(1, points, 1, 1) + dx
    # grid_sample's coordinates without corner alignment: pixel p of a side n lies at (2p + 1) / n - 1.
    grid = torch.stack(((2 * sample_x + 1) / width - 1, (2 * sample_y + 1) / height - 1), dim=-1)
    grid = grid.view(batch, -1, points, tile * tile, 2).permute(0, 1, 3, 2, 4).reshape(batch, -1, points, 2)
    sampled = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    modulation = torch.sigmoid(mask).view(batch, -1, points, tile * tile).permute(0, 1, 3, 2)
    sampled = sampled * modulation.reshape(batch, 1, -1, points)
    columns = sampled.permute(0, 2, 1, 3).reshape(-1, channels * points)
    out = F.linear(columns, conv.weight.reshape(conv.weight.shape[0], -1), conv.bias)
    return out.view(-1, tile, tile, out.shape[-1]).permute(0, 3, 1, 2)


def _group_norm(norm: nn.GroupNorm, values: torch.Tensor, groups: torch.Tensor,
                weights: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm of ``values`` viewed as ``groups`` ``(B, X, G, C / G, N)``: statistics per image and group over
    dims 1, 3 and 4, counting each pixel with its ``weights`` (broadcastable, 0 or 1; None: all 1)."""
    dims = (1, 3, 4)
    # Statistics in float32 at least, as autocast runs nn.GroupNorm: a half-precision sum over a map loses digits.
    dtype = torch.promote_types(values.dtype, torch.float32)
    groups = groups.to(dtype)
    weights = None if weights is None else weights.to(dtype)
    if weights is None:
        mean = groups.mean(dim=dims, keepdim=True)
        centred = groups - mean
        variance = centred.square().mean(dim=dims, keepdim=True)
    else:
        count = (weights.sum(dim=dims, keepdim=True) * groups.shape[3]).clamp_min(1)
        mean = (groups * weights).sum(dim=dims, keepdim=True) / count
        centred = groups - mean
        variance = (centred.square() * weights).sum(dim=dims, keepdim=True) / count
    out = (centred * torch.rsqrt(variance + norm.eps)).view(values.shape)
    if norm.affine:
        out = out * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return out.to(values.dtype)


def group_norm_on_tiles(norm: nn.GroupNorm, values: torch.Tensor, tiles: KeptTiles) -> torch.Tensor:
    """GroupNorm of ``values`` ``(B * k, C, t, t)`` with each image's statistics over its kept pixels (those
    of its kept tiles inside the map); with every tile kept this is ``nn.GroupNorm`` of the map."""
    batch, kept = tiles.index.shape
    channels, tile = values.shape[1], tiles.tile_size
    groups = values.reshape(batch, kept, norm.num_groups, channels // norm.num_groups, tile * tile)
    inside = inside_pixels(tiles, values.device)
    weights = None if inside is None else inside.view(batch, kept, 1, 1, tile * tile).to(values.dtype)
    return _group_norm(norm, values, groups, weights)


def group_norm_on_kept_pixels(norm: nn.GroupNorm, x: torch.Tensor, tiles: KeptTiles) -> torch.Tensor:
    """GroupNorm of the map ``x`` ``(B, C, H, W)`` with each image's statistics over its kept pixels: the dense
    fallback's form of :func:`group_norm_on_tiles` (equal on the kept tiles)."""
    batch, channels = x.shape[:2]
    groups = x.reshape(batch, 1, norm.num_groups, channels // norm.num_groups, -1)
    weights = tiles.mask().reshape(batch, 1, 1, 1, -1).to(x.dtype)
    return _group_norm(norm, x, groups, weights)


def check_tile_layer(layer: nn.Module, where: str) -> None:
    """Raise unless :func:`run_on_kept` computes on kept tiles what ``layer`` computes: an ``nn.Conv2d`` or mmcv
    ``ConvModule`` that keeps the map size, or a pixel-wise module (an activation)."""
    from mmcv.cnn import ConvModule
    if isinstance(layer, nn.Conv2d):
        same_padding_halo(layer, where)
        return
    if not isinstance(layer, ConvModule):
        if isinstance(layer, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Identity)):
            return
        raise TypeError(f'{where}: layers computed on kept tiles are nn.Conv2d, mmcv ConvModule or pixel-wise '
                        f'activations, got {type(layer).__name__}')
    if layer.with_explicit_padding or layer.with_spectral_norm or tuple(layer.order) != ('conv', 'norm', 'act'):
        raise ValueError(f'{where}: a ConvModule on kept tiles runs conv, norm, act with zero padding and no '
                         f'spectral norm; got order {layer.order}, explicit padding {layer.with_explicit_padding}, '
                         f'spectral norm {layer.with_spectral_norm}')
    if layer.with_norm and not isinstance(layer.norm, nn.GroupNorm):
        raise ValueError(f'{where}: a norm layer on kept tiles must be GroupNorm (statistics over the kept pixels) '
                         f'or none; got {type(layer.norm).__name__}, whose statistics would take in the pixels of '
                         f'the tiles\' padding')
    if isinstance(layer.conv, nn.Conv2d):
        same_padding_halo(layer.conv, where)
    elif type(layer.conv).__name__ == 'ModulatedDeformConv2dPack':
        same_padding_halo(layer.conv, where)
    else:
        raise TypeError(f'{where}: the convolution of a ConvModule on kept tiles is nn.Conv2d or mmcv\'s '
                        f'ModulatedDeformConv2dPack (DCNv2), got {type(layer.conv).__name__}')


def _halo(layer: nn.Module) -> int:
    """Pixels around a tile that ``layer`` reads (0: pixel-wise)."""
    conv = getattr(layer, 'conv', layer)
    if not hasattr(conv, 'kernel_size'):
        return 0
    return max(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))


def _layer_on_tiles(layer: nn.Module, x: torch.Tensor, tiles: KeptTiles, halo_source: torch.Tensor | None
                    ) -> torch.Tensor:
    """``layer`` on the tile batch ``x`` ``(B * k, C, t, t)``, or, for a layer that reads a halo, on the kept
    tiles of the map ``halo_source``."""
    conv = getattr(layer, 'conv', layer)
    if not hasattr(conv, 'kernel_size'):
        return layer(x)
    if halo_source is not None:
        if isinstance(conv, nn.Conv2d):
            out = conv_on_tiles(conv, halo_source, tiles)
        else:
            out = deform_conv_on_tiles(conv, halo_source, tiles)
    else:
        out = F.conv2d(x, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)
    if conv is not layer:
        if layer.with_norm:
            out = group_norm_on_tiles(layer.norm, out, tiles)
        if layer.with_activation:
            out = layer.activate(out)
    return out


def _layer_on_map(layer: nn.Module, x: torch.Tensor, tiles: KeptTiles) -> torch.Tensor:
    """``layer`` on the whole map, a GroupNorm with statistics over the kept pixels (the dense fallback)."""
    conv = getattr(layer, 'conv', layer)
    if conv is layer or not hasattr(conv, 'kernel_size'):
        return layer(x)
    out = conv(x)
    if layer.with_norm:
        out = group_norm_on_kept_pixels(layer.norm, out, tiles)
    if layer.with_activation:
        out = layer.activate(out)
    return out


class KeptFeature:
    """A feature computed on the kept tiles of a map only, as :func:`run_on_kept` returns it.

    It holds the batch of those tiles ``(B * k, C, t, t)``, or, where the layers ran densely
    (``dense_pays``), the whole map, whose skipped tiles hold values that no result shows.
    """

    def __init__(self, tiles: KeptTiles, batch: torch.Tensor | None = None, dense: torch.Tensor | None = None
                 ) -> None:
        self.tiles = tiles
        self.batch = batch
        self.dense = dense
        self._zero_filled: torch.Tensor | None = None

    def to_map(self, fill: float | torch.Tensor) -> torch.Tensor:
        """The map ``(B, C, H, W)``: the feature on the kept tiles, ``fill`` (a number or a map) elsewhere."""
        zero = not isinstance(fill, torch.Tensor) and fill == 0
        if zero and self._zero_filled is not None:
            return self._zero_filled
        if self.dense is not None:
            out = keep_computed(self.dense, self.tiles, fill)
        else:
            out = scatter_tiles(self.batch, self.tiles, fill)
        if zero:
            self._zero_filled = out
        return out


def run_on_kept(layers: Sequence[nn.Module], x: torch.Tensor | KeptFeature, tiles: KeptTiles) -> KeptFeature:
    """``layers`` applied in turn to ``x`` (a map, or a :class:`KeptFeature` of ``tiles``), on its kept tiles only.

    A layer that reads a halo (a 3x3 convolution) reads the map ``x`` around the tiles if it comes first, and
    zeros around them otherwise: what the previous layers computed exists on the kept tiles only. A
    GroupNorm takes its statistics over the kept pixels. Each layer must pass :func:`check_tile_layer`.
    """
    if not layers:
        raise ValueError('run_on_kept needs at least one layer')
    if isinstance(x, KeptFeature) and x.tiles is not tiles:
        raise ValueError('run_on_kept: the KeptFeature was computed on other tiles than those given')
    dense_mode = dense_pays(tiles)
    # The map the next layer reads (the input, or the zero-filled output of a previous layer) ...
    source = None if isinstance(x, KeptFeature) else x
    # ... or the previous layer's output, as a tile batch or (dense mode) a whole map.
    batch = x.batch if isinstance(x, KeptFeature) else None
    dense = x.dense if isinstance(x, KeptFeature) else None
    for index, layer in enumerate(layers):
        halo = _halo(layer)
        if source is None and halo > 0:
            # What the previous layers computed exists on the kept tiles only: zeros around them.
            source = (x if index == 0 else KeptFeature(tiles, batch, dense)).to_map(0.)
        if dense_mode:
            dense = _layer_on_map(layer, dense if source is None else source, tiles)
        elif source is not None and halo > 0:
            batch = _layer_on_tiles(layer, None, tiles, source)
        else:
            batch = _layer_on_tiles(layer, batch if source is None else gather_tiles(source, tiles), tiles, None)
        source = None
    return KeptFeature(tiles, batch=batch, dense=dense)
