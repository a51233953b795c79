"""SparseViTSwin against mmdet's SwinTransformer and against a literal re-implementation of the paper's algorithm."""
import math
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import PatchMerging
from mmdet.models.backbones.swin import SwinTransformer, swin_converter
from mmengine.registry import MODELS

from plugin.models.backbones import SparseViTSwin
from plugin.models.backbones.sparsevit_swin import SparseSwinBlockSequence, TokenPatchMerging
from plugin.models.utils.sparsity import normalize_pruning_ratios

TINY = dict(embed_dims=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.)
MIXED_RATIOS = [[0.3, 0.5], [0.0, 0.2], [0.1, 0.1, 0.4, 0.4], [0.5, 0.8]]


def make_pair(**overrides):
    """mmdet's Swin and ours with identical random weights, in eval mode."""
    torch.manual_seed(0)
    cfg = {**TINY, **overrides}
    reference = SwinTransformer(**cfg)
    reference.init_weights()
    reference.eval()
    ours = SparseViTSwin(**cfg)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.eval()


def _pad_roll_partition(x, window_size, shift):
    """(B, H, W, C) -> (B, nW, N, C) through Swin's literal pad, roll and partition."""
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, 0, (-W) % window_size, 0, (-H) % window_size))
    Hp, Wp = x.shape[1:3]
    if shift:
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, -1, window_size * window_size, C), (Hp, Wp)


def _reverse(windows, padded, hw, window_size, shift):
    B, _, _, C = windows.shape
    Hp, Wp = padded
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if shift:
        x = torch.roll(x, (shift, shift), dims=(1, 2))
    return x[:, :hw[0], :hw[1]]


def _shift_mask(padded, window_size, shift):
    img = torch.zeros(1, *padded, 1)
    cuts = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for label, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
        img[:, h, w] = label
    labels, _ = _pad_roll_partition(img, window_size, 0)
    labels = labels[0, :, :, 0]
    return (labels[:, None, :] != labels[:, :, None]).float() * -100.


def reference_sparsevit(swin: SwinTransformer, x: torch.Tensor, ratios):
    """The paper's algorithm written out literally on mmdet's Swin modules."""
    x, hw = swin.patch_embed(x)
    outs, kept_sets = [], []
    for i, stage in enumerate(swin.stages):
        activity, rankings, stage_kept = None, {}, []
        for block, ratio in zip(stage.blocks, ratios[i]):
            ws, shift = block.attn.window_size, block.attn.shift_size
            B, _, C = x.shape
            grid = x.view(B, *hw, C)
            windows, padded = _pad_roll_partition(grid, ws, shift)
            normed, _ = _pad_roll_partition(block.norm1(x).view(B, *hw, C), ws, shift)
            num_windows = windows.shape[1]
            if ratio > 0 and activity is None:
                activity = grid.abs().mean(-1, keepdim=True)
            if activity is not None and shift not in rankings:
                act_windows, _ = _pad_roll_partition(activity, ws, shift)
                scores = act_windows[..., 0].norm(dim=-1)
                rankings[shift] = scores.topk(num_windows, dim=1).indices
            keep = (rankings[shift][:, :math.floor(round(num_windows * (1 - ratio), 6))] if activity is not None
                    else torch.arange(num_windows).expand(B, -1))
            stage_kept.append(keep)
            if keep.shape[1] == 0:
                continue
            pick = keep[:, :, None, None].expand(-1, -1, ws * ws, C)
            kept_normed = normed.gather(1, pick)
            mask = None
            if shift:
                mask = _shift_mask(padded, ws, shift)[keep].reshape(-1, ws * ws, ws * ws)
            attn = block.attn.w_msa(kept_normed.reshape(-1, ws * ws, C), mask=mask)
            y = windows.gather(1, pick) + attn.view(B, -1, ws * ws, C)
            y = block.ffn(block.norm2(y), identity=y)
            windows = windows.scatter(1, pick, y)
            x = _reverse(windows, padded, hw, ws, shift).reshape(B, -1, C)
        kept_sets.append(stage_kept)
        out, out_hw = x, hw
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
        if i in swin.out_indices:
            out = getattr(swin, f'norm{i}')(out)
            outs.append(out.view(-1, *out_hw, out.shape[-1]).permute(0, 3, 1, 2))
    return outs, kept_sets


def max_diff(outs_a, outs_b):
    return max((a - b).abs().max().item() for a, b in zip(outs_a, outs_b))


@pytest.mark.parametrize('size', [(224, 224), (333, 517), (100, 61), (65, 97)])
def test_dense_equals_mmdet_swin(size):
    reference, ours = make_pair()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert [o.shape for o in got] == [o.shape for o in expected]
    assert max_diff(expected, got) <= 1e-5


def test_state_dict_matches_mmdet_keys_and_shapes():
    reference = SwinTransformer(**TINY)
    ours = SparseViTSwin(**TINY)
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs


@pytest.mark.parametrize('size,batch', [((333, 517), 2), ((97, 130), 3), ((224, 224), 1)])
def test_pruned_equals_literal_reference(size, batch):
    reference, ours = make_pair()
    ours.set_pruning_ratios(MIXED_RATIOS)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected, expected_kept = reference_sparsevit(reference, x, MIXED_RATIOS)
        got = ours(x)
    assert max_diff(expected, got) <= 1e-5
    for stage, (ours_stage, ref_stage) in enumerate(zip(ours.kept_windows, expected_kept)):
        for block, (mine, theirs) in enumerate(zip(ours_stage, ref_stage)):
            if mine is None:
                assert MIXED_RATIOS[stage][block] == 0 and theirs.shape[1] == expected_kept[stage][block].shape[1]
                continue
            assert mine.shape == theirs.shape
            for image in range(batch):
                assert set(mine[image].tolist()) == set(theirs[image].tolist())


def test_unselected_windows_are_copied_bit_identically():
    torch.manual_seed(1)
    stage = SparseSwinBlockSequence(embed_dims=8, num_heads=2, feedforward_channels=16, depth=2, window_size=4)
    stage.eval()
    hw = (13, 18)
    x = torch.randn(2, hw[0] * hw[1], 8)
    with torch.no_grad():
        _, _, out, _, kept = stage(x.clone(), hw, [0.5, 0.5])
    touched = torch.zeros(2, 16, 20, dtype=torch.bool)
    for block, kept_windows in zip(stage.blocks, kept):
        shift = block.shift_size
        ids = torch.arange(16 * 20).view(1, 16, 20, 1).float().expand(2, -1, -1, -1)
        windows, _ = _pad_roll_partition(ids, 4, shift)
        for image in range(2):
            touched[image].view(-1)[windows[image, kept_windows[image], :, 0].long().flatten()] = True
    touched = touched[:, :hw[0], :hw[1]].reshape(2, -1)
    assert touched.any() and not touched.all()
    assert torch.equal(out[~touched], x[~touched])
    assert not torch.equal(out[touched], x[touched])


def test_kept_windows_are_top_k_of_stage_scores_per_image():
    _, ours = make_pair()
    ours.set_pruning_ratios([[0.5, 0.5], 0., 0., 0.])
    x = torch.randn(2, 3, 112, 140)
    x[1] = x[1].flip(-1)  # a different image must get a different selection
    with torch.no_grad():
        tokens, hw = ours.patch_embed(x)
        ours(x)
    activity = tokens.abs().mean(-1).view(2, *hw, 1)
    for block, kept in zip(ours.stages[0].blocks, ours.kept_windows[0]):
        act_windows, _ = _pad_roll_partition(activity, 7, block.shift_size)
        scores = act_windows[..., 0].norm(dim=-1)
        k = kept.shape[1]
        assert k == scores.shape[1] // 2
        for image in range(2):
            assert set(kept[image].tolist()) == set(scores[image].topk(k).indices.tolist())
    assert set(ours.kept_windows[0][0][0].tolist()) != set(ours.kept_windows[0][0][1].tolist())


def test_scores_computed_once_per_pruned_stage():
    _, ours = make_pair()
    ours.set_pruning_ratios(MIXED_RATIOS)
    with mock.patch.object(SparseSwinBlockSequence, '_rank_windows', autospec=True,
                           side_effect=SparseSwinBlockSequence._rank_windows) as rank:
        with torch.no_grad():
            ours(torch.randn(1, 3, 96, 96))
    assert rank.call_count == 4
    ours.set_pruning_ratios([0., 0., [0., 0., 0.2, 0.2], 0.])
    with mock.patch.object(SparseSwinBlockSequence, '_rank_windows', autospec=True,
                           side_effect=SparseSwinBlockSequence._rank_windows) as rank:
        with torch.no_grad():
            ours(torch.randn(1, 3, 96, 96))
    assert rank.call_count == 1


def test_later_blocks_take_a_prefix_of_the_ranking():
    _, ours = make_pair()
    ours.set_pruning_ratios([0., 0., [0.1, 0.1, 0.4, 0.4], 0.])
    with torch.no_grad():
        ours(torch.randn(2, 3, 160, 160))
    kept = ours.kept_windows[2]
    for first, later in ((kept[0], kept[2]), (kept[1], kept[3])):
        assert later.shape[1] < first.shape[1]
        assert torch.equal(later, first[:, :later.shape[1]])


def test_gradients_reach_every_parameter_at_ratio_zero():
    _, ours = make_pair()
    ours.train()
    outs = ours(torch.randn(2, 3, 75, 90))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in ours.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_training_with_pruning_and_checkpointing_matches_plain():
    torch.manual_seed(0)
    plain = SparseViTSwin(**TINY, pruning_ratios=MIXED_RATIOS)
    checkpointed = SparseViTSwin(**TINY, pruning_ratios=MIXED_RATIOS, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 90, 75)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    _, ours = make_pair()
    ours.set_pruning_ratios(MIXED_RATIOS)
    x = torch.randn(2, 3, 97, 130)
    with torch.no_grad():
        full = ours(x)
        with torch.autocast('cpu', dtype=dtype):
            low = ours(x)
    for a, b in zip(full, low):
        assert torch.isfinite(b).all()
        assert (a - b.float()).abs().mean() < 0.05 * a.abs().mean()


def test_compiles_without_graph_breaks_and_matches_eager():
    _, ours = make_pair()
    x = torch.randn(2, 3, 97, 130)
    for ratios in (0., MIXED_RATIOS):
        ours.set_pruning_ratios(ratios)
        torch._dynamo.reset()
        compiled = torch.compile(ours, backend='eager', fullgraph=True)
        with torch.no_grad():
            assert max_diff(ours(x), compiled(x)) == 0


@pytest.mark.parametrize('ratios,message', [
    ([0.1, 0.2, 0.3], r'3 entries but the backbone has 4 stages'),
    ([[0.1, 0.2, 0.3], 0., 0., 0.], r'stage 0 must be a float or a list of 2'),
    ([0., [-0.1, 0.], 0., 0.], r'stage 1, block 0 is -0.1: ratios must lie in \[0, 1\)'),
    ([0., 0., [0., 0., 0., 0.], 1.0], r'stage 3, block 0 is 1.0'),
    ([0., 0., [0.2, 0.2, 0.1, 0.1], 0.], r'stage 2, block 2 \(0.1\) is below that of block 1 \(0.2\)'),
])
def test_bad_pruning_ratios_raise(ratios, message):
    with pytest.raises(ValueError, match=message):
        SparseViTSwin(**TINY, pruning_ratios=ratios)
    model = SparseViTSwin(**TINY)
    with pytest.raises(ValueError, match=message):
        model.set_pruning_ratios(ratios)
    assert model.pruning_ratios == normalize_pruning_ratios(0., TINY['depths'])


def test_bad_architecture_arguments_raise():
    with pytest.raises(ValueError, match=re.escape("arch must be one of ['base', 'small', 'tiny']")):
        SparseViTSwin(arch='huge')
    with pytest.raises(ValueError, match='out_indices'):
        SparseViTSwin(**TINY, out_indices=(0, 4))


def test_frozen_stages_freeze_parameters():
    model = SparseViTSwin(**TINY, frozen_stages=2)
    model.train()
    frozen = ['patch_embed', 'stages.0', 'stages.1', 'norm0', 'norm1']
    for name, param in model.named_parameters():
        assert param.requires_grad != any(name.startswith(f) for f in frozen), name
    assert not model.stages[1].training and model.stages[2].training


def test_registered_for_mmdet_and_mmseg_configs():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    for registry in (MODELS, MMDET_MODELS, MMSEG_MODELS):
        backbone = registry.build(dict(type='SparseViTSwin', **TINY, pruning_ratios=0.3))
        assert isinstance(backbone, SparseViTSwin)


def _official_swin_state_dict(mmdet_state_dict):
    """Undo mmdet's ``swin_converter``: the key names and unfold order of the official Swin release."""
    def reduction_to_official(x):
        out_channels, in_channels = x.shape
        return x.reshape(out_channels, in_channels // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]].reshape(
            out_channels, in_channels)

    def norm_to_official(x):
        return x.reshape(-1, 4).T[[0, 2, 1, 3]].reshape(-1)

    official = {}
    for key, value in mmdet_state_dict.items():
        if re.match(r'norm\d', key):
            continue
        new_key = (key.replace('stages', 'layers', 1).replace('attn.w_msa.', 'attn.')
                   .replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.', 'mlp.fc2.')
                   .replace('patch_embed.projection', 'patch_embed.proj'))
        if 'downsample.reduction' in key:
            value = reduction_to_official(value)
        elif 'downsample.norm' in key:
            value = norm_to_official(value)
        official[new_key] = value
    official['head.weight'] = torch.zeros(10, 128)
    return official


def test_loads_mmdet_detector_checkpoint_and_official_release(tmp_path):
    reference, _ = make_pair()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = reference(x)

    detector_ckpt = tmp_path / 'mask_rcnn_swin.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in reference.state_dict().items()}
                | {'neck.lateral_convs.0.conv.weight': torch.zeros(1)}}, detector_ckpt)
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(detector_ckpt)))
    model.init_weights()
    with torch.no_grad():
        assert max_diff(expected, model.eval()(x)) <= 1e-5

    official = _official_swin_state_dict(reference.state_dict())
    converted = {k[len('backbone.'):]: v for k, v in swin_converter(official).items()}
    for key, value in converted.items():
        assert torch.equal(value, reference.state_dict()[key]), key
    official_ckpt = tmp_path / 'swin_tiny_patch4_window7_224.pth'
    torch.save({'model': official}, official_ckpt)
    model = SparseViTSwin(**TINY, convert_weights=True)
    incompatible = model.load_pretrained(str(official_ckpt))
    # The classification release has no per-output norms; everything else must load.
    assert sorted(incompatible.missing_keys) == sorted(f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert incompatible.unexpected_keys == []
    for i in range(4):
        getattr(model, f'norm{i}').load_state_dict(getattr(reference, f'norm{i}').state_dict())
    with torch.no_grad():
        assert max_diff(expected, model.eval()(x)) <= 1e-5


def _top_half_decisions(log_probs, hard=True):
    """Stands in for hard Gumbel-Softmax: keep exactly the top half of the windows by keep score."""
    keep = torch.zeros_like(log_probs[..., 0])
    k = math.floor(log_probs.shape[1] * 0.5 + 1e-9)
    keep.scatter_(1, log_probs[..., 0].topk(k, dim=1).indices, 1.)
    return torch.stack([keep, 1 - keep], dim=-1)


def test_learned_scorer_training_path_equals_inference_path_for_the_same_decisions():
    torch.manual_seed(0)
    model = SparseViTSwin(**TINY, scorer='learned', pruning_ratios=[0.5, 0.5, 0.5, 0.])
    x = torch.randn(2, 3, 97, 130)
    model.eval()
    with torch.no_grad():
        inference = model(x)
    model.train()
    with mock.patch('torch.nn.functional.gumbel_softmax', side_effect=_top_half_decisions), torch.no_grad():
        training = model(x)
    assert max_diff(inference, training) <= 1e-5


def test_learned_scorer_trains_predictor_and_reports_keep_ratio_loss():
    torch.manual_seed(0)
    model = SparseViTSwin(**TINY, scorer='learned', pruning_ratios=[[0.3, 0.5], 0., [0.2, 0.2, 0.4, 0.4], 0.])
    model.train()
    outs = model(torch.randn(2, 3, 97, 130))
    losses = model.auxiliary_losses()
    assert set(losses) == {'loss_window_keep_ratio'} and torch.isfinite(losses['loss_window_keep_ratio'])
    (sum(o.square().mean() for o in outs) + losses['loss_window_keep_ratio']).backward()
    for stage in (0, 2):
        grads = [p.grad for p in model.stages[stage].window_scorer.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 130))
    assert model.auxiliary_losses() == {}
    # 97x130 -> 25x33 tokens -> 4x5 windows of 7: ratio 0.3 keeps 14, ratio 0.5 keeps 10.
    assert [k.shape for k in model.kept_windows[0]] == [(1, 14), (1, 10)]


def test_bad_scorer_raises():
    with pytest.raises(ValueError, match="scorer must be 'l2'"):
        SparseViTSwin(**TINY, scorer='random')


@pytest.mark.parametrize('hw_shape', [(7, 9), (8, 10), (1, 1)])
def test_token_patch_merging_equals_mmcv_without_unfolding(hw_shape):
    mmcv_merging = PatchMerging(16, 32, stride=2, norm_cfg=dict(type='LN'))
    ours = TokenPatchMerging(16, 32, stride=2, norm_cfg=dict(type='LN'))
    ours.load_state_dict(mmcv_merging.state_dict())
    x = torch.randn(2, hw_shape[0] * hw_shape[1], 16)
    expected, expected_shape = mmcv_merging(x, hw_shape)
    with mock.patch.object(PatchMerging, 'forward', side_effect=AssertionError('fell back to mmcv')):
        out, out_shape = ours(x, hw_shape)
    assert out_shape == expected_shape
    assert torch.equal(out, expected)
