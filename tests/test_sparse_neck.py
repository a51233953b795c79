"""SparseFPN against mmdet's and mmseg's FPN at the same weights, and against a plainly written reference of what
it gives skipped tiles."""
import pytest
import torch
import torch.nn.functional as F
from kept_tiles import every_tile, random_tiles
from mmdet.models.necks import FPN
from mmengine.registry import MODELS
from mmseg.models.necks import FPN as SegFPN

from plugin.models.necks.sparse_fpn import SparseFPN
from plugin.models.utils.records import KeptTiles
from plugin.models.utils.tile_conv import COMPUTE_MODES, computed_as

IN_CHANNELS = [4, 6, 8, 10]
# The maps of a 75x110 image at strides 4..32 (SparseViT-Swin's stages), cut into tiles of 4 (its windows).
SHAPES = [(19, 28), (10, 14), (5, 7), (3, 4)]
TILE = 4
BATCH = 2
OUT = 7

pytestmark = pytest.mark.usefixtures('one_thread')


def randomize_biases(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('bias'):
                param.normal_()  # Xavier leaves them at zero, which would hide a missing bias
    return module


@pytest.fixture(scope='module')
def inputs():
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(BATCH, c, *shape, generator=generator) for c, shape in zip(IN_CHANNELS, SHAPES)]
    # Levels 0 and 2 pruned (as cfg2 prunes stages 0 and 2), 1 and 3 dense.
    tiles = [random_tiles(BATCH, SHAPES[0], TILE, 13, generator), None,
             random_tiles(BATCH, SHAPES[2], TILE, 1, generator), None]
    return features, tiles


@pytest.fixture(scope='module')
def fpns():
    """mmdet's FPN (Mask R-CNN's: 5 outputs, P6 by max pooling) and SparseFPN in every fill, at its weights."""
    torch.manual_seed(0)
    reference = FPN(IN_CHANNELS, OUT, 5)
    reference.init_weights()
    randomize_biases(reference).eval()
    sparse = {}
    for fill in ('laterals', 'coarser', 'zero'):
        sparse[fill] = SparseFPN(IN_CHANNELS, OUT, 5, fill_skipped=fill).eval()
        sparse[fill].load_state_dict(reference.state_dict(), strict=True)
    return reference, sparse


def reference_outputs(fpn: FPN, features, tiles, fill: str) -> list[torch.Tensor]:
    """What SparseFPN gives, computed densely: mmdet's FPN outputs on kept tiles; on skipped tiles the input of
    mmdet's output convolution there ('laterals'), the next coarser output of this reference (nearest; the
    coarsest level's zero) or zero."""
    masks = [None if t is None else t.mask().unsqueeze(1) for t in tiles]
    conv_inputs = {}
    hooks = [conv.register_forward_pre_hook(lambda _, args, i=i: conv_inputs.setdefault(i, args[0]))
             for i, conv in enumerate(fpn.fpn_convs)]
    outs = list(fpn(features))[:len(features)]
    for hook in hooks:
        hook.remove()
    for i in range(len(outs) - 1, -1, -1):
        if masks[i] is not None:
            if fill == 'laterals':
                skipped = conv_inputs[i]
            elif fill == 'coarser' and i + 1 < len(outs):
                skipped = F.interpolate(outs[i + 1], size=outs[i].shape[2:])
            else:
                skipped = torch.zeros(())
            outs[i] = torch.where(masks[i], outs[i], skipped)
    return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


def assert_all_close(outputs, references):
    assert len(outputs) == len(references)
    for output, reference in zip(outputs, references):
        torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_with_every_tile_kept_it_is_mmdet_fpn(fpns, inputs, mode):
    reference, sparse = fpns
    features, _ = inputs
    everywhere = [every_tile(BATCH, shape, TILE) for shape in SHAPES]
    with torch.no_grad(), computed_as(mode):
        expected = reference(features)
        for fpn in sparse.values():
            out = fpn(features, everywhere)
            assert_all_close(out, expected)
            assert out.kept_tiles == (*everywhere, None)
        assert_all_close(sparse['coarser'](features), expected)


@pytest.mark.parametrize('fill', ['laterals', 'coarser', 'zero'])
@pytest.mark.parametrize('mode', COMPUTE_MODES)
def test_skipped_tiles_get_what_the_reference_gives_them(fpns, inputs, fill, mode):
    reference, sparse = fpns
    features, tiles = inputs
    with torch.no_grad():
        expected = reference_outputs(reference, features, tiles, fill)
        with computed_as(mode):
            out = sparse[fill](features, tiles)
    assert_all_close(out, expected)
    assert out.kept_tiles == (*tiles, None)
    assert all(o.is_contiguous() for o in out)  # mmcv's RoIAlign reads the memory as NCHW


def test_the_dense_fallback_gives_what_the_tiles_give(fpns, inputs):
    _, sparse = fpns
    features, tiles = inputs
    with torch.no_grad():
        with computed_as('tiles'):
            on_tiles = sparse['coarser'](features, tiles)
        with computed_as('dense'):
            masked = sparse['coarser'](features, tiles)
    assert_all_close(on_tiles, masked)


def test_semantic_fpn_with_every_tile_kept_is_mmseg_fpn(inputs):
    features, _ = inputs
    torch.manual_seed(0)
    reference = SegFPN(IN_CHANNELS, OUT, 4)
    reference.init_weights()
    randomize_biases(reference).eval()
    sparse = SparseFPN(IN_CHANNELS, OUT, 4).eval()
    sparse.load_state_dict(reference.state_dict(), strict=True)
    everywhere = [every_tile(BATCH, shape, TILE) for shape in SHAPES]
    with torch.no_grad(), computed_as('tiles'):
        assert_all_close(sparse(features, everywhere), reference(features))


def test_extra_convolutions_and_start_level_as_fcos3d_configures_them(inputs):
    """FCOS3D's FPN: from the second input, P6 and P7 by convolutions on the last output."""
    features, tiles = inputs
    config = dict(in_channels=IN_CHANNELS, out_channels=OUT, start_level=1, add_extra_convs='on_output', num_outs=5,
                  relu_before_extra_convs=True)
    torch.manual_seed(0)
    reference = randomize_biases(MODELS.build(dict(type='mmdet.FPN', **config))).eval()
    sparse = MODELS.build(dict(type='SparseFPN', **config)).eval()
    sparse.load_state_dict(reference.state_dict(), strict=True)
    everywhere = [every_tile(BATCH, shape, TILE) for shape in SHAPES]
    with torch.no_grad(), computed_as('tiles'):
        assert_all_close(sparse(features, everywhere), reference(features))
        out = sparse(features, tiles)
    assert out.kept_tiles == (None, tiles[2], None, None, None)
    assert [tuple(o.shape[2:]) for o in out] == [(10, 14), (5, 7), (3, 4), (2, 2), (1, 1)]


def test_training_gradients_reach_every_parameter(inputs):
    features, tiles = inputs
    torch.manual_seed(0)
    fpn = SparseFPN(IN_CHANNELS, OUT, 5).train()
    with computed_as('tiles'):
        outputs = fpn([x.clone().requires_grad_() for x in features], tiles)
    sum(out.square().mean() for out in outputs).backward()
    missing = [name for name, param in fpn.named_parameters() if param.grad is None or not param.grad.any()]
    assert not missing


def test_mismatched_tiles_and_arguments_are_refused(fpns, inputs):
    _, sparse = fpns
    fpn = sparse['coarser']
    features, tiles = inputs
    with pytest.raises(ValueError, match='one kept-tiles entry'):
        fpn(features, tiles[:3])
    with pytest.raises(ValueError, match='takes 4 feature maps'):
        fpn(features[:3], tiles[:3])
    with pytest.raises(ValueError, match=r'input 0: the kept tiles describe a \(10, 14\) map but the feature map '
                                         r'is \(19, 28\)'):
        fpn(features, [KeptTiles(tiles[0].index, TILE, SHAPES[1]), *tiles[1:]])
    with pytest.raises(ValueError, match='a batch of 2 images'):
        fpn(features, [KeptTiles(tiles[0].index[:1], TILE, SHAPES[0]), *tiles[1:]])
    with pytest.raises(ValueError, match='fill_skipped must be one of'):
        SparseFPN(IN_CHANNELS, OUT, 5, fill_skipped='nearest')
    with pytest.raises(ValueError, match='GroupNorm'):
        SparseFPN(IN_CHANNELS, OUT, 5, norm_cfg=dict(type='BN'))
