"""Convolutions on kept tiles (plugin.models.utils.tile_conv) against the dense layers on the same map."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kept_tiles import every_tile, masked_group_norm_reference, random_tiles
from mmcv.cnn import ConvModule
from mmcv.ops import ModulatedDeformConv2dPack

from plugin.models.utils import tile_conv
from plugin.models.utils.records import KeptTiles
from plugin.models.utils.tile_conv import (
    COMPUTE_MODES,
    SparseFeatures,
    check_tile_layer,
    computed_as,
    gather_tiles,
    group_norm_on_tiles,
    run_on_kept,
    scatter_tiles,
)

# 3 x 4 tiles of 4 pixels; the last row and column are cut at 3 and 1 pixels.
SHAPE = (11, 13)
TILE = 4
BATCH = 2

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def case():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 6, *SHAPE, generator=generator)
    tiles = random_tiles(BATCH, SHAPE, TILE, 5, generator)
    return x, tiles


def test_scattered_tiles_are_the_gathered_ones_and_the_fill_elsewhere(case):
    x, tiles = case
    out = scatter_tiles(gather_tiles(x, tiles), tiles, -7.)
    mask = tiles.mask().unsqueeze(1)
    assert out.shape == x.shape
    assert torch.equal(out, torch.where(mask, x, torch.tensor(-7.)))
    fill = torch.randn_like(x)
    assert torch.equal(scatter_tiles(gather_tiles(x, tiles), tiles, fill), torch.where(mask, x, fill))


def test_gathered_tiles_carry_their_halo_with_zeros_outside_the_map(case):
    x, tiles = case
    patches = gather_tiles(x, tiles, halo=2)
    padded = F.pad(x, (2, 2 + 16 - SHAPE[1], 2, 2 + 12 - SHAPE[0]))  # to whole tiles, plus the halo
    columns = 4
    for image in range(BATCH):
        for slot, tile in enumerate(tiles.index[image].tolist()):
            row, col = divmod(tile, columns)
            expected = padded[image, :, row * TILE:row * TILE + TILE + 4, col * TILE:col * TILE + TILE + 4]
            assert torch.equal(patches[image * tiles.index.shape[1] + slot], expected)


def test_exported_rows_and_pytorch_planes_move_the_same_tiles(case, monkeypatch):
    """An exported graph moves channels-last rows, PyTorch channel planes: the same tiles and maps either way, and
    PyTorch gives one image's map of whole tiles back in NCHW memory (what mmcv's RoIAlign reads)."""
    x, tiles = case
    fill = torch.randn_like(x)
    planes = gather_tiles(x, tiles, halo=1), scatter_tiles(gather_tiles(x, tiles), tiles, fill)
    whole_tiles = KeptTiles(tiles.index[:1], TILE, (12, 16))
    one_image = F.pad(x[:1], (0, 3, 0, 1))
    assert scatter_tiles(gather_tiles(one_image, whole_tiles), whole_tiles, one_image).is_contiguous()
    monkeypatch.setattr(tile_conv, 'is_exporting', lambda: True)
    rows = gather_tiles(x, tiles, halo=1), scatter_tiles(gather_tiles(x, tiles), tiles, fill)
    for from_planes, from_rows in zip(planes, rows):
        assert torch.equal(from_planes, from_rows)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_layers_on_kept_tiles_are_the_dense_layers_with_zeros_between_them(case, mode):
    """A dilated 3x3 conv reads the input map around the tiles; the 3x3 conv after it reads zeros there."""
    x, tiles = case
    torch.manual_seed(0)
    layers = [nn.Conv2d(6, 5, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1),
              nn.Conv2d(4, 3, 1)]
    mask = tiles.mask().unsqueeze(1)
    reference = layers[1](layers[0](x)) * mask
    reference = torch.where(mask, layers[3](layers[2](reference)), torch.tensor(5.))
    with computed_as(mode), torch.no_grad():
        out = run_on_kept(layers, x, tiles).to_map(5.)
    torch.testing.assert_close(out, reference.detach(), rtol=1e-5, atol=1e-5)


def test_group_norm_on_kept_tiles_takes_its_statistics_over_the_kept_pixels(case):
    x, tiles = case
    norm = nn.GroupNorm(3, 6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
        out = scatter_tiles(group_norm_on_tiles(norm, gather_tiles(x, tiles), tiles), tiles, 0.)
        reference = masked_group_norm_reference(norm, x, tiles.mask()) * tiles.mask().unsqueeze(1)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        everywhere = every_tile(BATCH, SHAPE, TILE)
        out = scatter_tiles(group_norm_on_tiles(norm, gather_tiles(x, everywhere), everywhere), everywhere, 0.)
        torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_group_norm_conv_module_on_kept_tiles_matches_the_masked_reference(case, mode):
    x, tiles = case
    torch.manual_seed(0)
    module = ConvModule(6, 6, 3, padding=1, norm_cfg=dict(type='GN', num_groups=2))
    with torch.no_grad():
        module.norm.weight.uniform_(0.5, 1.5)
        module.norm.bias.normal_()
    mask = tiles.mask()
    with computed_as(mode), torch.no_grad():
        out = run_on_kept([module], x, tiles).to_map(0.)
        reference = F.relu(masked_group_norm_reference(module.norm, module.conv(x), mask)) * mask.unsqueeze(1)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_deformable_conv_on_kept_tiles_equals_mmcv_on_the_map(case, mode):
    x, tiles = case
    torch.manual_seed(0)
    conv = ModulatedDeformConv2dPack(6, 5, 3, padding=1)
    with torch.no_grad():
        conv.conv_offset.weight.normal_(0, 0.5)  # offsets of a few pixels, some pointing outside the map
        conv.conv_offset.bias.normal_(0, 1.)
        reference = conv(x)
        everywhere = every_tile(BATCH, SHAPE, TILE)
        with computed_as(mode):
            torch.testing.assert_close(run_on_kept([conv], x, everywhere).to_map(0.), reference, rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(run_on_kept([conv], x, tiles).to_map(0.),
                                       reference * tiles.mask().unsqueeze(1), rtol=1e-5, atol=1e-5)


def test_gradients_of_layers_on_kept_tiles_are_those_of_the_computation(case):
    x, tiles = case
    module = ConvModule(2, 2, 3, padding=1, norm_cfg=dict(type='GN', num_groups=1)).double()
    x = x[:, :2].double().requires_grad_()
    params = tuple(module.parameters())

    def function(x, *params):
        return run_on_kept([module], x, tiles).to_map(0.)
    with computed_as('tiles'):
        assert torch.autograd.gradcheck(function, (x, *params))


def test_the_dense_fallback_threshold_follows_the_device_of_the_tiles():
    """A layer on 6 of 16 tiles runs on the tiles on the CPU and densely on a GPU (the measured crossings);
    computed_as forces either path on any device and puts the thresholds back."""
    on_cpu = random_tiles(2, (28, 28), 7, kept=6, generator=torch.Generator().manual_seed(0))
    # Any device but the CPU takes the GPU's threshold; the meta device stands in for one.
    on_gpu = KeptTiles(on_cpu.index.to('meta'), on_cpu.tile_size, on_cpu.feature_shape)
    assert not tile_conv.dense_pays(on_cpu)
    assert tile_conv.dense_pays(on_gpu)
    every = every_tile(1, (28, 28), 7)
    assert tile_conv.dense_pays(every) and tile_conv.dense_pays(KeptTiles(every.index.to('meta'), 7, (28, 28)))
    with computed_as('dense'):
        assert tile_conv.dense_pays(on_cpu)
    with computed_as('tiles'):
        assert not tile_conv.dense_pays(on_gpu)
    assert not tile_conv.dense_pays(on_cpu) and tile_conv.dense_pays(on_gpu)
    with pytest.raises(ValueError, match="one of \\('tiles', 'dense'\\), got 'sparse'"):
        with computed_as('sparse'):
            pass


def test_layers_that_cannot_run_on_tiles_are_refused():
    with pytest.raises(ValueError, match='keep the map size'):
        check_tile_layer(nn.Conv2d(4, 4, 3, stride=2, padding=1), 'strided')
    with pytest.raises(ValueError, match='keep the map size'):
        check_tile_layer(nn.Conv2d(4, 4, 2), 'even kernel')
    with pytest.raises(ValueError, match='keep the map size'):
        check_tile_layer(nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'), 'reflect')
    with pytest.raises(ValueError, match='GroupNorm'):
        check_tile_layer(ConvModule(4, 4, 3, padding=1, norm_cfg=dict(type='BN')), 'batch norm')
    with pytest.raises(TypeError, match='nn.Conv2d'):
        check_tile_layer(nn.Linear(4, 4), 'linear')


def test_sparse_features_check_their_tiles():
    maps = [torch.zeros(2, 3, 11, 13), torch.zeros(2, 3, 6, 7)]
    tiles = every_tile(2, (11, 13), 4)
    features = SparseFeatures(maps, [tiles, None])
    assert features.kept_tiles == (tiles, None)
    copied = copy.deepcopy(features)
    assert isinstance(copied, SparseFeatures) and torch.equal(copied.kept_tiles[0].index, tiles.index)
    with pytest.raises(ValueError, match='one kept-tiles entry'):
        SparseFeatures(maps, [tiles])
    with pytest.raises(ValueError, match=r'describe a \(11, 13\) map but the feature map is \(6, 7\)'):
        SparseFeatures(maps, [tiles, tiles])
    with pytest.raises(ValueError, match='a batch of 2 images'):
        SparseFeatures(maps, [KeptTiles(torch.zeros(3, 1, dtype=torch.long), 4, (11, 13)), None])
