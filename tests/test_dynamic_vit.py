"""DynamicViT: masking, training vs inference path, keep-ratio loss, gradients, sizes, timm weights, losses dict."""
import math

import pytest
import torch
from recorded_loops import RecordedLoops

from plugin.models.backbones import DynamicViT
from plugin.models.backbones.dynamic_vit import DynamicBlock, policy_softmax
from plugin.models.utils.records import recording
from plugin.models.utils.token_pruning import keep_ratio_loss

TINY = dict(embed_dims=48, depth=6, num_heads=3, pruning_locs=(1, 3, 5), drop_path_rate=0.)


def tiny_backbone(**kwargs) -> DynamicViT:
    torch.manual_seed(0)
    model = DynamicViT(**{**TINY, **kwargs})
    model.init_weights()
    return model


def random_policy(batch: int, num_patches: int, keep_probability: float = 0.6) -> torch.Tensor:
    """``(B, 1 + N, 1)`` hard decisions; the class token is kept."""
    keep = (torch.rand(batch, num_patches, 1) < keep_probability).float()
    return torch.cat([torch.ones(batch, 1, 1), keep], dim=1)


def paper_policy_softmax(logits: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """The authors' ``softmax_with_policy`` written out literally, without its eps."""
    B, N, _ = policy.shape
    attn_policy = policy.reshape(B, 1, 1, N)
    attn_policy = attn_policy + (1. - attn_policy) * torch.eye(N).view(1, 1, N, N)
    attn = (logits - logits.max(dim=-1, keepdim=True)[0]).exp() * attn_policy
    return attn / attn.sum(dim=-1, keepdim=True)


def topk_decisions(model: DynamicViT, num_patches: int):
    """A replacement for the Gumbel sampler that keeps what the inference path keeps."""
    num_keep = iter(int(num_patches * ratio) for ratio in model.keep_ratios)

    def decide(log_probs, prev_decision):
        scores = log_probs[..., 0].masked_fill(prev_decision[..., 0] == 0, float('-inf'))
        keep = torch.zeros_like(scores).scatter(1, scores.topk(next(num_keep), dim=1).indices, 1.)
        return keep.unsqueeze(-1)

    return decide


def test_policy_softmax_matches_the_paper_values_and_gradients():
    torch.manual_seed(0)
    logits = (torch.randn(2, 3, 9, 9) * 4).requires_grad_()
    policy = random_policy(2, 8).requires_grad_()
    ref_logits, ref_policy = logits.detach().clone().requires_grad_(), policy.detach().clone().requires_grad_()
    weights = torch.randn(2, 3, 9, 9)

    ours = policy_softmax(logits, policy)
    reference = paper_policy_softmax(ref_logits, ref_policy)
    (ours * weights).sum().backward()
    (reference * weights).sum().backward()

    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    torch.testing.assert_close(policy.grad, ref_policy.grad)
    assert policy.grad[:, 1:].abs().sum() > 0


def test_kept_token_outputs_ignore_dropped_token_values():
    torch.manual_seed(0)
    block = DynamicBlock(dim=48, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 17, 48)
    policy = random_policy(2, 16)
    dropped = policy[..., 0] == 0
    changed = x.clone()
    changed[dropped] = torch.randn(int(dropped.sum()), 48) * 10

    out, out_changed = block(x, policy), block(changed, policy)

    kept = ~dropped
    torch.testing.assert_close(out_changed[kept], out[kept], rtol=0, atol=1e-6)
    assert not torch.allclose(out_changed[dropped], out[dropped])
    # Each image's kept tokens give what a block run on them alone gives.
    for image in range(2):
        alone = block(x[image:image + 1, kept[image]])
        torch.testing.assert_close(out[image, kept[image]], alone[0], rtol=0, atol=1e-5)


def test_inference_path_matches_training_path_for_the_same_decisions(monkeypatch):
    model = tiny_backbone()
    images = torch.randn(2, 3, 96, 160)
    num_patches = 6 * 10
    monkeypatch.setattr(model, 'sample_keep_decision', topk_decisions(model, num_patches))

    model.train()
    train_tokens = model.forward_features(images)
    # The decisions are the deterministic top-k: a second pass records the same ones.
    monkeypatch.setattr(model, 'sample_keep_decision', topk_decisions(model, num_patches))
    kept_fractions = [fraction.tolist() for fraction in model.forward_with_record(images)[1].keep_ratio_terms()[0]]
    model.eval()
    with torch.no_grad():
        eval_tokens = model.forward_features(images)

    assert kept_fractions == [pytest.approx([int(num_patches * r) / num_patches] * 2) for r in model.keep_ratios]
    # Every token agrees: kept ones computed alike, pruned ones held at the same value.
    torch.testing.assert_close(train_tokens, eval_tokens, rtol=0, atol=1e-5)
    # Not vacuous: pruning changed the result (the dense model has the same ViT weights).
    dense = tiny_backbone(pruning_locs=()).eval()
    dense.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(dense.forward_features(images), eval_tokens, atol=1e-3)


def test_keep_ratio_loss_is_zero_at_target_and_grows_away_from_it():
    targets = (0.7, 0.49, 0.343)
    at_target = [torch.full((4, ), t) for t in targets]
    assert keep_ratio_loss(at_target, targets) == 0

    previous = torch.tensor(0.)
    for offset in (0.01, 0.05, 0.2):
        for sign in (1, -1):
            fractions = [f + sign * offset for f in at_target]
            loss = keep_ratio_loss(fractions, targets)
            torch.testing.assert_close(loss, torch.tensor(offset**2))
        assert loss > previous
        previous = loss
    # Per image, not of the batch mean: images above and below the target do not cancel.
    assert keep_ratio_loss([torch.tensor([0.6, 0.8])], (0.7, )) > 0
    with pytest.raises(ValueError, match='one kept-fraction tensor per target'):
        keep_ratio_loss(at_target[:2], targets)


def test_no_nan_when_every_token_is_dropped():
    model = tiny_backbone().train()
    for predictor in model.score_predictor:
        predictor.out_conv[4].bias.data = torch.tensor([-50., 50.])
    images = torch.randn(2, 3, 64, 80)

    features, record = model.forward_with_record(images)
    losses = model.auxiliary_losses(record)
    (sum(f.mean() for f in features) + losses['loss_keep_ratio']).backward()

    assert all(torch.isfinite(f).all() for f in features)
    assert all((fraction == 0).all() for fraction in record.keep_ratio_terms()[0])
    expected = model.keep_ratio_loss_weight * sum(r**2 for r in model.keep_ratios) / len(model.keep_ratios)
    torch.testing.assert_close(losses['loss_keep_ratio'].item(), expected)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # Inference with a keep count of zero (one patch, rho 0.5) keeps only the class token.
    model = tiny_backbone(keep_ratio=0.5).eval()
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in model(torch.randn(1, 3, 16, 16)))


def test_predictor_gradients_are_nonzero_after_one_training_step():
    model = tiny_backbone().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.score_predictor.parameters()]
    features, record = model.forward_with_record(torch.randn(2, 3, 64, 96))
    # The task loss alone reaches the predictors through the straight-through decisions.
    task_loss = sum((f**2).mean() for f in features)
    task_loss.backward(retain_graph=True)
    for predictor in model.score_predictor:
        assert predictor.in_conv[1].weight.grad.abs().sum() > 0
        assert predictor.out_conv[4].weight.grad.abs().sum() > 0
    model.auxiliary_losses(record)['loss_keep_ratio'].backward()
    optimizer.step()
    for name, param in model.score_predictor.named_parameters():
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert all(not torch.equal(b, p) for b, p in zip(before, model.score_predictor.parameters()) if b.dim() == 2)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_features_are_full_size_at_odd_input_sizes(training):
    model = tiny_backbone().train(training)
    grid = math.ceil(333 / 16), math.ceil(517 / 16)
    with torch.set_grad_enabled(training):
        features = model(torch.randn(1, 3, 333, 517))
    expected = [(grid[0] * 4, grid[1] * 4), (grid[0] * 2, grid[1] * 2), grid,
                (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))]
    assert [tuple(f.shape[-2:]) for f in features] == expected
    assert [f.shape[1] for f in features] == model.out_channels == [12, 24, 48, 48]


def test_out_indices_and_out_channels_select_levels():
    model = tiny_backbone(out_indices=(1, 3), out_channels=32).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [(32, 8, 8), (32, 2, 2)]


def test_with_cp_gives_the_same_gradients():
    images = torch.randn(1, 3, 48, 64)
    grads = []
    for with_cp in (False, True):
        model = tiny_backbone(with_cp=with_cp).train()
        torch.manual_seed(1)  # same Gumbel noise
        features, record = model.forward_with_record(images)
        (sum(f.mean() for f in features) + model.auxiliary_losses(record)['loss_keep_ratio']).backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_frozen_stages_freeze_embedding_blocks_and_their_predictors():
    model = tiny_backbone(frozen_stages=3)
    assert model.train() is model
    assert not model.patch_embed.proj.weight.requires_grad and not model.pos_embed.requires_grad
    assert all(not p.requires_grad for block in model.blocks[:3] for p in block.parameters())
    assert all(p.requires_grad for block in model.blocks[3:] for p in block.parameters())
    assert not model.blocks[2].training and model.blocks[3].training
    # Predictors sit before blocks 1, 3, 5: only the first is inside the frozen part.
    assert [all(not p.requires_grad for p in predictor.parameters()) for predictor in model.score_predictor] == [
        True, False, False]


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='deit-xl'), 'arch must be one of'),
    (dict(embed_dims=50), 'divisible by num_heads'),
    (dict(pruning_locs=(3, 1)), 'strictly increasing'),
    (dict(pruning_locs=(1, 6)), 'strictly increasing'),
    (dict(keep_ratio=1.5), r'keep_ratio must lie in \(0, 1\]'),
    (dict(keep_ratio=(0.5, 0.7, 0.3)), 'non-increasing'),
    (dict(keep_ratio=(0.5, 0.3)), 'per pruning location'),
    (dict(out_indices=(0, 4)), 'out_indices must be distinct pyramid levels'),
    (dict(out_channels=(8, 8)), 'out_channels must be an int or 4 ints'),
    (dict(frozen_stages=7), 'frozen_stages must lie in'),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicViT(**{**TINY, **kwargs})


def timm_deit(**kwargs):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    return timm.create_model('deit_small_patch16_224', pretrained=False, embed_dim=48, depth=6, num_heads=3,
                             **kwargs).eval()


def test_timm_checkpoint_loads_through_the_converter(tmp_path):
    reference = timm_deit()
    checkpoint = tmp_path / 'deit.pth'
    torch.save({'model': reference.state_dict()}, checkpoint)
    images = torch.randn(2, 3, 224, 224)

    for kwargs in (dict(pruning_locs=()), dict(keep_ratio=1.0)):
        model = DynamicViT(**{**TINY, **kwargs}, init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
        model.init_weights()
        incompatible = model.load_pretrained(str(checkpoint))
        assert not [k for k in incompatible.missing_keys if not k.startswith(('score_predictor.', 'pyramid.'))]
        assert set(incompatible.unexpected_keys) <= {'head.weight', 'head.bias'}
        with torch.no_grad():
            torch.testing.assert_close(model.eval().forward_features(images), reference.forward_features(images),
                                       rtol=0, atol=1e-5)


def test_position_embedding_is_resampled_like_timm(tmp_path):
    """At an odd size (padding, resampled embedding) and from another pretraining size."""
    state_dict = timm_deit().state_dict()
    checkpoint = tmp_path / 'deit.pth'
    torch.save(state_dict, checkpoint)
    reference = timm_deit(dynamic_img_size=True, dynamic_img_pad=True)
    reference.load_state_dict(state_dict)

    for pretrain_img_size, image_size in ((224, (333, 517)), (256, (256, 256))):
        model = DynamicViT(**{**TINY, 'pruning_locs': ()}, pretrain_img_size=pretrain_img_size,
                           init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
        model.init_weights()
        images = torch.randn(1, 3, *image_size)
        with torch.no_grad():
            torch.testing.assert_close(model.eval().forward_features(images), reference.forward_features(images),
                                       rtol=0, atol=1e-5)


def tiny_config(path: str):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    cfg.model.backbone.update(TINY, arch=None, init_cfg=None)
    cfg.model.neck.update(in_channels=[12, 24, 48, 48], out_channels=32)
    if cfg.default_scope == 'mmdet':
        for head in ('bbox_roi_extractor', 'bbox_head', 'mask_roi_extractor', 'mask_head'):
            channels = 'out_channels' if head.endswith('extractor') else 'in_channels'
            cfg.model.roi_head[head][channels] = 32
        cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
        cfg.model.train_cfg.rpn_proposal.max_per_img = 100
        cfg.model.train_cfg.rcnn.sampler.num = 64
    else:
        cfg.model.decode_head.in_channels = [32] * 4
    return cfg


def detection_batch():
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=2, image_shapes=(3, 64, 96), num_items=[2, 1], num_classes=80, with_mask=True)


def segmentation_batch():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8))
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 96))),
                                     metainfo=dict(img_shape=(64, 96), ori_shape=(64, 96), pad_shape=(64, 96))))
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('config, make_batch, crop', [
    ('configs/dynamicvit/mask-rcnn_dynamicvit-deit-s-r0.7_fpn_1x_coco.py', detection_batch, None),
    ('configs/dynamicvit/fpn_dynamicvit-deit-s-r0.7_4xb4-160k_ade20k-512x512.py', segmentation_batch, (64, 96)),
], ids=['mask-rcnn', 'semantic-fpn'])
def test_keep_ratio_loss_reaches_the_losses_dict(config, make_batch, crop):
    from mmengine.optim import OptimWrapper
    from mmengine.registry import MODELS, init_default_scope
    cfg = tiny_config(config)
    if crop is not None:
        cfg.model.data_preprocessor.size = crop  # the config pads to 512x512; tiny inputs suffice here
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.backbone.score_predictor.parameters()]

    with recording() as records:
        log_vars = model.train_step(make_batch(), optim_wrapper)

    backbone = model.backbone
    expected = backbone.keep_ratio_loss_weight * keep_ratio_loss(records[0].keep_ratio_terms()[0],
                                                                 backbone.keep_ratios)
    torch.testing.assert_close(log_vars['loss_keep_ratio'], expected.detach())
    assert log_vars['loss_keep_ratio'] > 0
    # parse_losses summed it into the total the optimizer stepped on.
    head_losses = sum(v for k, v in log_vars.items() if k.startswith(('loss_', 'decode.loss')) and k != 'loss')
    torch.testing.assert_close(log_vars['loss'], head_losses)
    assert all(not torch.equal(b, p) for b, p in zip(before, backbone.score_predictor.parameters()) if b.dim() == 2)


def test_backbone_loss_models_reject_backbones_without_auxiliary_losses():
    pytest.importorskip('mmseg')
    from mmengine.registry import MODELS, init_default_scope
    cfg = tiny_config('configs/dynamicvit/fpn_dynamicvit-deit-s-r0.7_4xb4-160k_ade20k-512x512.py')
    cfg.model.backbone = dict(type='ResNetV1c', depth=18)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    init_default_scope('mmseg')
    with pytest.raises(TypeError, match='auxiliary_losses'):
        MODELS.build(cfg.model)


def test_dynamicvit_benchmark_times_the_models_of_an_input_size_in_one_loop(monkeypatch):
    """``tools/benchmark.py dynamicvit`` at 64x64 and 96x96: one alternating loop per input size, every model in it,
    speedups against the dense model's latency."""
    import argparse

    from plugin.benchmarks import dynamicvit
    loops = RecordedLoops()
    monkeypatch.setattr(dynamicvit, 'alternating_latency_ms', loops)
    args = argparse.Namespace(arch='deit-s', sizes=[(64, 64), (96, 96)], keep_ratios=[0.7, 0.5], batch=1,
                              device=torch.device('cpu'), warmup=0, repeats=1)
    rows = dynamicvit.run(args)
    assert loops.sizes == [3, 3]
    assert [(row['input'], row['rho'], row['speedup']) for row in rows[:3]] == [
        ('64x64', 1.0, 1.0), ('64x64', 0.7, 0.5), ('64x64', 0.5, 1 / 3)]
    assert rows[2]['MACs ratio'] > rows[1]['MACs ratio'] > 1.0
