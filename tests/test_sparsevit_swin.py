"""SparseViTSwin against mmdet's SwinTransformer and against a literal re-implementation of the paper's algorithm."""
import math
import re
from collections.abc import Sequence
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import PatchMerging
from mmdet.models.backbones.swin import SwinTransformer, swin_converter
from mmengine.registry import MODELS
from recorded_loops import RecordedLoops

from plugin.models.backbones import SparseViTSwin
from plugin.models.backbones.sparsevit_swin import SparseSwinBlockSequence, TokenPatchMerging
from plugin.models.utils.checkpoint import CheckpointMismatchError
from plugin.models.utils.records import BlockRecord, StageRecord
from plugin.models.utils.sparsity import normalize_pruning_ratios

TINY = dict(embed_dims=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.)
MIXED_RATIOS = [[0.3, 0.5], [0.0, 0.2], [0.1, 0.1, 0.4, 0.4], [0.5, 0.8]]


def kept_per_block(stage: StageRecord | Sequence[BlockRecord]) -> list[torch.Tensor | None]:
    """Per block of a stage's record, the (B, k) windows it ran (None: all)."""
    return [block.kept for block in (stage.blocks if isinstance(stage, StageRecord) else stage)]


def kept_fractions(stage: StageRecord) -> list[torch.Tensor]:
    """The kept fractions of a stage's learned training decisions, block by block."""
    return [block.kept_fraction for block in stage.blocks if block.kept_fraction is not None]


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
        got, record = ours.forward_with_record(x)
    assert max_diff(expected, got) <= 1e-5
    for stage, (ours_stage, ref_stage) in enumerate(zip(record.stages, expected_kept)):
        for block, (mine, theirs) in enumerate(zip(kept_per_block(ours_stage), ref_stage)):
            if mine is None:
                # A dense block: the paper's rule keeps floor((1 - 0) * nW) = every window of its grid.
                height, width = ours_stage.hw_shape
                num_windows = math.ceil(height / 7) * math.ceil(width / 7)
                assert MIXED_RATIOS[stage][block] == 0 and theirs.shape[1] == num_windows
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
    for block, kept_windows in zip(stage.blocks, kept_per_block(kept)):
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
        _, record = ours.forward_with_record(x)
    activity = tokens.abs().mean(-1).view(2, *hw, 1)
    kept_windows = kept_per_block(record.stages[0])
    for block, kept in zip(ours.stages[0].blocks, kept_windows):
        act_windows, _ = _pad_roll_partition(activity, 7, block.shift_size)
        scores = act_windows[..., 0].norm(dim=-1)
        k = kept.shape[1]
        assert k == scores.shape[1] // 2
        for image in range(2):
            assert set(kept[image].tolist()) == set(scores[image].topk(k).indices.tolist())
    assert set(kept_windows[0][0].tolist()) != set(kept_windows[0][1].tolist())


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
        _, record = ours.forward_with_record(torch.randn(2, 3, 160, 160))
    kept = kept_per_block(record.stages[2])
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
    ([[0.1, 0.2, 0.3], 0., 0., 0.], r'stage 0 must be a number or a list of 2'),
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


@pytest.mark.parametrize('ratios,message', [
    ('0.5', r"pruning_ratios must be a number or a list with one entry per stage \(4 stages\), got '0.5'"),
    ([0., '0.5', 0., 0.], r"pruning_ratios of stage 1 must be a number or a list of 2 per-block ratios, got '0.5'"),
    ([0., [0., '0.5'], 0., 0.], r"stage 1, block 1 is '0.5' \(str\): ratios are numbers"),
    (False, r'got False'),
    ([0., [0., True], 0., 0.], r'stage 1, block 1 is True \(bool\)'),
])
def test_pruning_ratios_of_the_wrong_type_raise_type_errors(ratios, message):
    with pytest.raises(TypeError, match=message):
        SparseViTSwin(**TINY, pruning_ratios=ratios)


def test_numpy_ratios_are_numbers():
    import numpy as np
    model = SparseViTSwin(**TINY, pruning_ratios=np.float32(0.5))
    assert model.pruning_ratios == [[0.5, 0.5], [0.5, 0.5], [0.5] * 4, [0.5, 0.5]]
    model.set_pruning_ratios([0., [np.float64(0.1), np.float64(0.2)], 0., 0.])
    assert model.pruning_ratios[1] == [0.1, 0.2]


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
    # The release's classifier, its final norm and the cached shift masks of its shifted blocks.
    official['head.weight'] = torch.zeros(10, 128)
    official['norm.weight'] = torch.ones(128)
    official['layers.0.blocks.1.attn_mask'] = torch.zeros(4, 49, 49)
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
    converted = {k[len('backbone.'):]: v for k, v in swin_converter(official).items()
                 if not k.endswith('attn_mask') and k != 'backbone.norm.weight'}
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


def _threshold_at_top_half(scores):
    """Stands in for the logistic noise: a per-image shift that puts the threshold of ratio 0.5
    between the k-th and (k+1)-th log-odds, so the training rule keeps exactly the top k."""
    k = math.floor(scores.shape[1] * 0.5 + 1e-9)
    top = scores.topk(k + 1, dim=1).values
    return -(top[:, k - 1:k] + top[:, k:k + 1]) / 2 * torch.ones_like(scores)


def test_learned_scorer_training_keeps_the_windows_inference_keeps_for_the_same_scores():
    torch.manual_seed(0)
    model = SparseViTSwin(**TINY, scorer='learned', pruning_ratios=[0.5, 0.5, 0.5, 0.])
    x = torch.randn(2, 3, 97, 130)
    model.eval()
    with torch.no_grad():
        inference = model(x)
    model.train()
    with mock.patch('plugin.models.backbones.sparsevit_swin.sample_logistic_noise',
                    side_effect=_threshold_at_top_half), torch.no_grad():
        training, record = model.forward_with_record(x)
    assert max_diff(inference, training) <= 1e-5
    # 97x130 -> 4x5, 2x3 and 1x2 windows in stages 1-3: every block keeps floor(n / 2) of its n.
    for stage, num_windows in zip(record.stages[:3], (20, 6, 2)):
        expected = torch.full((2,), (num_windows // 2) / num_windows)
        assert len(kept_fractions(stage)) == len(stage.blocks)
        assert all(torch.equal(fraction, expected) for fraction in kept_fractions(stage))


def test_learned_scorer_blocks_with_equal_ratios_keep_equal_shares_in_training():
    torch.manual_seed(0)
    model = SparseViTSwin(**TINY, scorer='learned', pruning_ratios=[0., 0., [0.5] * 4, 0.]).train()
    _, record = model.forward_with_record(torch.randn(3, 3, 224, 224))
    regular_0, shifted_1, regular_2, shifted_3 = kept_fractions(record.stages[2])
    # One ranking per stage and grid, the same prefix for the same ratio: no compounding across blocks.
    assert torch.equal(regular_0, regular_2) and torch.equal(shifted_1, shifted_3)


def test_keep_ratio_loss_alone_trains_every_block_to_its_own_target():
    torch.manual_seed(0)
    ratios = [[0.2, 0.2, 0.6, 0.6], 0., 0., 0.]
    model = SparseViTSwin(embed_dims=16, depths=(4, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4,
                          drop_path_rate=0., scorer='learned', pruning_ratios=ratios).train()
    images = torch.randn(4, 3, 128, 128)  # stage 1: 32x32 tokens, 64 windows per grid
    scorer = model.stages[0].window_scorer
    with torch.no_grad():
        scorer.out_conv[-2].bias.copy_(torch.tensor([3., -3.]))  # start far from the targets: keep almost all

    def mean_kept_fractions() -> torch.Tensor:
        """Per block, the kept fraction in training, averaged over images and 16 draws."""
        draws = []
        with torch.no_grad():
            for _ in range(16):
                _, record = model.forward_with_record(images)
                draws.append(torch.stack(kept_fractions(record.stages[0])).mean(1))
        return torch.stack(draws).mean(0)

    targets = torch.tensor([0.8, 0.8, 0.4, 0.4])
    assert (mean_kept_fractions() - targets).abs().max() > 0.5
    optimizer = torch.optim.Adam(scorer.parameters(), lr=3e-2)
    for _ in range(100):
        optimizer.zero_grad()
        _, record = model.forward_with_record(images)
        model.auxiliary_losses(record)['loss_window_keep_ratio'].backward()
        optimizer.step()
    kept = mean_kept_fractions()
    assert (kept - targets).abs().max() <= 0.05, kept


def test_learned_scorer_trains_predictor_and_reports_keep_ratio_loss():
    torch.manual_seed(0)
    model = SparseViTSwin(**TINY, scorer='learned', pruning_ratios=[[0.3, 0.5], 0., [0.2, 0.2, 0.4, 0.4], 0.])
    model.train()
    outs, record = model.forward_with_record(torch.randn(2, 3, 97, 130))
    losses = model.auxiliary_losses(record)
    assert set(losses) == {'loss_window_keep_ratio'} and torch.isfinite(losses['loss_window_keep_ratio'])
    (sum(o.square().mean() for o in outs) + losses['loss_window_keep_ratio']).backward()
    for stage in (0, 2):
        grads = [p.grad for p in model.stages[stage].window_scorer.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.eval()
    with torch.no_grad():
        _, record = model.forward_with_record(torch.randn(1, 3, 97, 130))
    assert model.auxiliary_losses(record) == {}
    # 97x130 -> 25x33 tokens -> 4x5 windows of 7: ratio 0.3 keeps 14, ratio 0.5 keeps 10.
    assert [k.shape for k in kept_per_block(record.stages[0])] == [(1, 14), (1, 10)]


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


def _save_backbone(path, state_dict, prefix='backbone.', extra=None):
    torch.save({'state_dict': {f'{prefix}{k}': v for k, v in state_dict.items()} | (extra or {}),
                'meta': {'epoch': 1}}, path)
    return str(path)


def test_pretrained_prefix_is_honoured(tmp_path):
    reference, _ = make_pair()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = reference(x)
    # mmdet3d names the image backbone img_backbone.
    path = _save_backbone(tmp_path / 'mono3d.pth', reference.state_dict(), 'img_backbone.',
                          {'img_neck.conv.weight': torch.zeros(1)})
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='img_backbone.'))
    model.init_weights()
    with torch.no_grad():
        assert max_diff(expected, model.eval()(x)) <= 1e-5
    # Without the prefix, the file holds no backbone of this model: the error lists what the file has.
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointMismatchError, match=r'(?s)missing keys.*img_backbone\. \(\d+\), img_neck\. \(1\)'):
        model.init_weights()
    with pytest.raises(CheckpointMismatchError, match=r"no key of the checkpoint starts with prefix 'neck\.'"):
        SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='neck')).init_weights()


def test_weights_of_another_architecture_raise_unless_partial_loading_is_asked(tmp_path):
    torch.manual_seed(0)
    deeper = SparseViTSwin(**{**TINY, 'depths': (2, 2, 6, 2)})
    path = _save_backbone(tmp_path / 'deeper.pth', deeper.state_dict())
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointMismatchError, match=r'(?s)unexpected keys: stages\.2\.blocks\.4\..*'
                                                      r'\[2, 2, 6, 2\] blocks per stage, the model \[2, 2, 4, 2\]'):
        model.init_weights()
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path, allow_partial=True))
    model.init_weights()
    assert torch.equal(model.stages[2].blocks[3].ffn.layers[1].weight, deeper.stages[2].blocks[3].ffn.layers[1].weight)
    wider = SparseViTSwin(**{**TINY, 'embed_dims': 32})
    path = _save_backbone(tmp_path / 'wider.pth', wider.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r'shape mismatches: patch_embed\.projection\.weight'):
        SparseViTSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def test_other_init_cfg_types_are_applied_after_the_default_init():
    model = SparseViTSwin(**TINY, init_cfg=dict(type='Constant', layer='Linear', val=0.5, bias=0.))
    model.init_weights()
    assert torch.all(model.stages[0].blocks[0].attn.w_msa.qkv.weight == 0.5)
    assert model.stages[0].blocks[0].attn.w_msa.relative_position_bias_table.abs().sum() > 0


def test_absolute_position_embedding_with_a_non_square_pretraining_size():
    model = SparseViTSwin(**TINY, use_abs_pos_embed=True, pretrain_img_size=(224, 320)).eval()
    assert model.absolute_pos_embed.shape == (1, 56 * 80, TINY['embed_dims'])
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 333, 517))
    assert [tuple(o.shape[-2:]) for o in outs] == [(84, 130), (42, 65), (21, 33), (11, 17)]
    # At the pretraining size the embedding is added as it is, elsewhere resampled from its own 56x80 grid.
    grid = model.absolute_pos_embed.detach().reshape(1, 56, 80, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(84, 130), mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    from plugin.models.backbones.sparsevit_swin import resample_pos_embed
    assert torch.equal(resample_pos_embed(model.absolute_pos_embed, (56, 80), (84, 130)), resized)


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(pretrained=123), TypeError, 'pretrained must be a str'),
    (dict(pretrain_img_size=(224, 224, 3)), ValueError, 'pretrain_img_size must be an int or a tuple of 1 or 2'),
    (dict(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')), ValueError,
     'init_cfg and pretrained cannot be set at the same time'),
    (dict(strides=(2, 2, 2, 2)), ValueError, r'strides\[0\] \(2\) must equal patch_size \(4\)'),
    (dict(arch='small', depths=(2, 2, 6, 2)), ValueError,
     r"arch='small' sets depths=\(2, 2, 18, 2\), but depths=\(2, 2, 6, 2\) was given too"),
])
def test_construction_checks_of_mmdet_swin(kwargs, error, message):
    with pytest.raises(error, match=message):
        SparseViTSwin(**{'drop_path_rate': 0., **kwargs})
    # Given together with arch, an argument equal to the preset is accepted (mmdet's base configs repeat them).
    assert SparseViTSwin(arch='tiny', embed_dims=96, depths=[2, 2, 6, 2]).depths == (2, 2, 6, 2)


def test_a_block_that_keeps_no_window_warns():
    model = SparseViTSwin(**TINY, pruning_ratios=[0., 0., 0., 0.5]).eval()
    with pytest.warns(UserWarning, match=r'stage 3 has 1 window\(s\) at this input size, so block 0 at ratio 0.5 '
                                         r'keeps floor\(0.5 x 1\) = 0'):
        with torch.no_grad():
            model(torch.randn(1, 3, 96, 96))


def test_library_resampling_equals_the_bicubic_resampling_of_mmdet_swin():
    """timm's helpers, used for checkpoints of another window or image size, compute what mmdet's Swin does
    (plain bicubic interpolation, no anti-aliasing), written out here as the reference."""
    from plugin.models.backbones.sparsevit_swin import resample_pos_embed
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 7 * 9, 8)
    for target in ((14, 18), (4, 5)):  # up- and downsampling
        grid = pos_embed.reshape(1, 7, 9, 8).permute(0, 3, 1, 2)
        expected = F.interpolate(grid, size=target, mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
        assert torch.equal(resample_pos_embed(pos_embed, (7, 9), target), expected)

    table = torch.randn((2 * 7 - 1)**2, 1)  # window 7 -> 12, one head in stage 1
    ours = SparseViTSwin(**{**TINY, 'window_size': 12})
    state = dict(ours.state_dict())
    key = 'stages.0.blocks.0.attn.w_msa.relative_position_bias_table'
    state[key] = table
    resized = ours.checkpoint_filter_fn(state)[key]
    assert resized.shape == (23 * 23, 1)
    expected = F.interpolate(table.T.reshape(1, -1, 13, 13), size=(23, 23), mode='bicubic')
    assert torch.equal(resized, expected.reshape(-1, 23 * 23).T.contiguous())


def test_sparsevit_benchmark_times_every_setting_on_its_own_copy_in_one_loop(monkeypatch):
    """``tools/benchmark.py sparsevit`` at 112x112, one timed call: every backbone of a batch size goes to one
    alternating loop, each pruning setting keeps its own ratios, and the speedups divide by the dense reference's."""
    import argparse

    from plugin.benchmarks import sparsevit
    loops = RecordedLoops()
    monkeypatch.setattr(sparsevit, 'alternating_latency_ms', loops)
    args = argparse.Namespace(size=(112, 112), batches=[1, 2], dtypes=['fp32'], modes=['eager'], ratios=['0', '0.6'],
                              learned_ratios=['0.6'], device=torch.device('cpu'), warmup=0, repeats=1)
    rows = sparsevit.run(args)
    assert loops.sizes == [4, 4]
    assert [row['backbone'] for row in rows[:4]] == [
        'mmdet SwinTransformer (dense)', 'SparseViTSwin uniform 0', 'SparseViTSwin uniform 0.6',
        'SparseViTSwin learned scorer uniform 0.6']
    assert [row['speedup'] for row in rows[:4]] == [1.0, 0.5, 1 / 3, 0.25]
    # Each copy keeps its own setting: the pruned ones count fewer MACs than the copy at ratio 0.
    assert rows[2]['GMACs/img'] < 0.7 * rows[1]['GMACs/img'] and rows[3]['GMACs/img'] < 0.8 * rows[1]['GMACs/img']
