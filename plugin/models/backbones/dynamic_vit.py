"""DynamicViT: a ViT/DeiT that learns which tokens to stop computing, for dense prediction.

Paper: "DynamicViT: Efficient Vision Transformers with Dynamic Token
Sparsification" (Rao et al., NeurIPS 2021). Parameter names are those of timm's
``VisionTransformer`` (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``,
``norm``) and of the authors' ``score_predictor``, so timm/DeiT checkpoints load
through timm's ``checkpoint_filter_fn``.

Before blocks ``pruning_locs`` a light predictor scores every token still kept;
the kept fraction of the grid shrinks to rho, rho^2, rho^3. Differences from the
classification model, all needed for dense outputs:
- a pruned token is not discarded: it keeps the value it had when it was pruned,
  and the final grid holds every token in its original order, from which a
  ViTDet-style simple feature pyramid builds stride 4, 8, 16 and 32 maps;
- training runs every token, with the keep policy as attention mask, and blends
  each block's output with its input by the policy, so it computes what the
  inference path (gather each image's top-k tokens, run only them, scatter them
  back) computes for the same decisions;
- any input size: the image is padded to a multiple of 16 and the position
  embedding resampled to the token grid.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from mmengine.registry import MODELS
from timm.layers import LayerNorm, LayerNorm2d, PatchEmbed, resample_abs_pos_embed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, checkpoint_filter_fn

from ..utils.arch import resolve_arch
from ..utils.blocks import freeze, run_block
from ..utils.checkpoint import PretrainedInitMixin, StateDict
from ..utils.records import BlockRecord, ForwardRecord, RecordingBackbone, StageRecord
from ..utils.token_pruning import TokenKeepPredictor, keep_ratio_loss

ARCH_SETTINGS = {
    'deit-s': dict(embed_dims=384, depth=12, num_heads=6),
    'deit-b': dict(embed_dims=768, depth=12, num_heads=12),
}
PATCH_SIZE = 16
# Pyramid levels: strides 4, 8, 16, 32, made from the stride-16 token grid.
NUM_LEVELS = 4


def policy_softmax(logits: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Attention weights in which every query sees the kept keys and itself, normalised in fp32.

    logits: ``(B, heads, N, N)``; policy: ``(B, N, 1)`` hard 0/1 keep decisions that
    carry a straight-through gradient. As in the paper the policy multiplies the
    exponentiated logits, so its gradient (the paper's) reaches the predictor.
    """
    key_policy = policy.float().reshape(policy.shape[0], 1, 1, -1)
    logits = logits.float()
    # Shifting by the row max (softmax is shift invariant) keeps every term <= 1.
    exp = (logits - logits.amax(-1, keepdim=True).detach()).exp()
    weighted = exp * key_policy
    # The self-loop: a dropped query still attends to itself.
    weighted.diagonal(dim1=-2, dim2=-1).add_((1 - key_policy[:, :, 0]) * exp.diagonal(dim1=-2, dim2=-1))
    # The normaliser only underflows when every allowed logit lies ~87 below a dropped one.
    return weighted / weighted.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


class PolicyAttention(Attention):
    """timm's attention that also runs under a keep policy.

    Written here because timm's additive ``attn_mask`` cannot carry the policy's
    straight-through gradient (log 0); without a policy it is timm's (fused) path.
    """

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        if policy is None:
            return super().forward(x)
        batch, num_tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.attn_drop(policy_softmax((q * self.scale) @ k.transpose(-2, -1), policy))
        x = (attn.to(v.dtype) @ v).transpose(1, 2).reshape(batch, num_tokens, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class DynamicBlock(Block):
    """timm's pre-norm ViT block (same parameters) whose attention takes a keep policy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, attn_layer=PolicyAttention, **kwargs)

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), policy=policy)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid: stride 4, 8, 16 and 32 maps from the stride-16 map.

    Stride 4: two 2x2 deconvolutions (LayerNorm and GELU between them); stride 8:
    one; stride 16: identity; stride 32: 2x2 max-pooling (ceil mode, so odd grids
    keep their border). A 1x1 convolution follows where the requested channels
    differ from the input's. Only the ``levels`` asked for are built.
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int], levels: Sequence[int],
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.branches = nn.ModuleList(self._branch(level, in_channels, out_channels[level]) for level in levels)

    @staticmethod
    def _branch(level: int, in_channels: int, out_channels: int) -> nn.Sequential:
        if level == 0:
            mid_channels = in_channels // 2
            return nn.Sequential(
                nn.ConvTranspose2d(in_channels, mid_channels, kernel_size=2, stride=2),
                LayerNorm2d(mid_channels), nn.GELU(),
                nn.ConvTranspose2d(mid_channels, out_channels, kernel_size=2, stride=2))
        if level == 1:
            return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2))
        layers = [] if level == 2 else [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        if out_channels != in_channels:
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=1))
        return nn.Sequential(*layers)

    def forward(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        return [branch(feature_map) for branch in self.branches]


def _gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(B, L, C)``, ``(B, k)`` -> ``(B, k, C)``."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _scatter_tokens(grid: torch.Tensor, index: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A copy of ``grid`` ``(B, L, C)`` with ``tokens`` ``(B, k, C)`` written at ``index`` ``(B, k)``."""
    return grid.scatter(1, index.unsqueeze(-1).expand(-1, -1, grid.shape[-1]), tokens.to(grid.dtype))


@MODELS.register_module()
class DynamicViT(PretrainedInitMixin, RecordingBackbone, BaseModule):
    """ViT/DeiT backbone with DynamicViT token pruning and a simple feature pyramid.

    Args:
        arch (str, optional): 'deit-s' or 'deit-b' sets ``embed_dims``, ``depth``
            and ``num_heads``; an explicit one of them must then agree with it.
            Without ``arch`` they default to DeiT-S's (384, 12, 6).
        pretrain_img_size (int | tuple): Image size the position embedding is
            stored for (resampled to every input's token grid). Default: 224.
        pruning_locs (sequence[int]): Blocks before which a predictor prunes
            tokens, strictly increasing. ``()`` gives the dense ViT.
        keep_ratio (float | sequence[float]): rho, giving the kept fractions
            rho, rho^2, rho^3, ... of the token grid at the pruning locations,
            or one fraction per location (non-increasing, in (0, 1]).
        keep_ratio_loss_weight (float): Weight of ``loss_keep_ratio`` in
            :meth:`auxiliary_losses` (the paper's 2.0).
        out_indices (sequence[int]): Pyramid levels to return: 0-3 for strides
            4, 8, 16, 32.
        out_channels (int | sequence[int], optional): Channels of the four
            levels; None gives ViTDet's (C/4, C/2, C, C).
        frozen_stages (int): -1 freezes nothing; 0 the patch embedding, class
            token and position embedding; i > 0 also blocks 0..i-1 and the
            predictors in front of them (and the final norm when all blocks are).
        with_cp (bool): Gradient checkpointing of every block.
    """

    # ViT checkpoints have no predictors and no pyramid: those then stay at their initialisation.
    optional_key_groups = (r'^score_predictor\.', r'^pyramid\.')

    def __init__(self,
                 arch: str | None = None,
                 embed_dims: int | None = None,
                 depth: int | None = None,
                 num_heads: int | None = None,
                 pretrain_img_size: int | tuple[int, int] = 224,
                 in_channels: int = 3,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 pruning_locs: Sequence[int] = (3, 6, 9),
                 keep_ratio: float | Sequence[float] = 0.7,
                 keep_ratio_loss_weight: float = 2.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_channels: int | Sequence[int] | None = None,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: dict | None = None) -> None:
        embed_dims, depth, num_heads = resolve_arch(
            arch, ARCH_SETTINGS, dict(embed_dims=embed_dims, depth=depth, num_heads=num_heads),
            ARCH_SETTINGS['deit-s']).values()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})')
        super().__init__(init_cfg=init_cfg)
        self.depth = depth
        self.pruning_locs = self._check_pruning_locs(pruning_locs, depth)
        self.keep_ratios = self._check_keep_ratios(keep_ratio, len(self.pruning_locs))
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        bad_indices = [i for i in out_indices if not 0 <= i < NUM_LEVELS]
        if bad_indices or len(set(out_indices)) != len(out_indices) or not out_indices:
            raise ValueError(f'out_indices must be distinct pyramid levels in [0, {NUM_LEVELS}) '
                             f'(strides 4, 8, 16, 32), got {tuple(out_indices)}')
        self.out_indices = tuple(out_indices)
        if out_channels is None:
            out_channels = (embed_dims // 4, embed_dims // 2, embed_dims, embed_dims)
        elif isinstance(out_channels, int):
            out_channels = (out_channels, ) * NUM_LEVELS
        if len(out_channels) != NUM_LEVELS:
            raise ValueError(f'out_channels must be an int or {NUM_LEVELS} ints (strides 4, 8, 16, 32), '
                             f'got {out_channels!r}')
        self.out_channels = [out_channels[i] for i in self.out_indices]
        if not -1 <= frozen_stages <= depth:
            raise ValueError(f'frozen_stages must lie in [-1, depth={depth}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.embed_dims = embed_dims

        # Padding to a multiple of the patch size lets any input size through.
        self.patch_embed = PatchEmbed(img_size=pretrain_img_size, patch_size=PATCH_SIZE, in_chans=in_channels,
                                      embed_dim=embed_dims, strict_img_size=False, dynamic_img_pad=True,
                                      output_fmt='NHWC')
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dims))
        self.pos_drop = nn.Dropout(p=drop_rate)
        block_drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            DynamicBlock(dim=embed_dims, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=block_drop_path[i],
                         norm_layer=LayerNorm) for i in range(depth))
        self.norm = LayerNorm(embed_dims)
        self.score_predictor = nn.ModuleList(TokenKeepPredictor(embed_dims) for _ in self.pruning_locs)
        self.pyramid = SimpleFeaturePyramid(embed_dims, out_channels, self.out_indices)

    @staticmethod
    def _check_pruning_locs(pruning_locs: Sequence[int], depth: int) -> tuple[int, ...]:
        locs = tuple(pruning_locs)
        if any(not isinstance(loc, int) or not 0 <= loc < depth for loc in locs) or list(locs) != sorted(set(locs)):
            raise ValueError(f'pruning_locs must be strictly increasing block indices in [0, depth={depth}), '
                             f'got {locs}')
        return locs

    @staticmethod
    def _check_keep_ratios(keep_ratio: float | Sequence[float], num_locs: int) -> tuple[float, ...]:
        if isinstance(keep_ratio, (int, float)):
            if not 0. < keep_ratio <= 1.:
                raise ValueError(f'keep_ratio must lie in (0, 1], got {keep_ratio}')
            return tuple(float(keep_ratio)**(i + 1) for i in range(num_locs))
        ratios = tuple(keep_ratio)
        if (len(ratios) != num_locs or any(not 0. < r <= 1. for r in ratios)
                or any(later > earlier for earlier, later in zip(ratios, ratios[1:]))):
            raise ValueError(f'keep_ratio must be a float rho in (0, 1] or one non-increasing fraction in (0, 1] '
                             f'per pruning location ({num_locs}), got {ratios}: a dropped token stays dropped')
        return tuple(float(r) for r in ratios)

    def train(self, mode: bool = True) -> 'DynamicViT':
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
            self.cls_token.requires_grad = False
            self.pos_embed.requires_grad = False
            self.pos_drop.eval()
        frozen += list(self.blocks[:max(self.frozen_stages, 0)])
        frozen += [predictor for loc, predictor in zip(self.pruning_locs, self.score_predictor)
                   if loc < self.frozen_stages]
        if self.frozen_stages == self.depth:
            frozen.append(self.norm)
        freeze(frozen)

    def default_init(self) -> None:
        """timm's ViT initialisation; ``init_weights`` then applies ``init_cfg`` (``PretrainedInitMixin``)."""
        trunc_normal_(self.pos_embed, std=.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, 1.)

    def checkpoint_filter_fn(self, state_dict: StateDict) -> StateDict:
        """A timm / DeiT / DynamicViT classification state dict -> ours: timm's ``checkpoint_filter_fn``
        reshapes old linear patch embeddings and resamples the position embedding to
        ``pretrain_img_size``; the classifier is dropped."""
        state_dict = checkpoint_filter_fn(state_dict, self)
        return {key: value for key, value in state_dict.items()
                if not key.startswith(('head.', 'head_dist.', 'fc_norm.'))}

    def sample_keep_decision(self, log_probs: torch.Tensor, prev_decision: torch.Tensor) -> torch.Tensor:
        """Training decisions ``(B, N, 1)``: hard Gumbel-Softmax (straight-through), times the previous ones."""
        return F.gumbel_softmax(log_probs, hard=True)[..., :1] * prev_decision

    def _forward_masked(self, x: torch.Tensor) -> tuple[torch.Tensor, list[BlockRecord]]:
        """Training: every token runs; pruned ones are masked out of attention and hold their value."""
        policy = None  # (B, 1 + N, 1) once the first predictor has run; the class token is always kept.
        predictors = dict(zip(self.pruning_locs, self.score_predictor))
        ratios = dict(zip(self.pruning_locs, self.keep_ratios))
        locations = []
        for i, block in enumerate(self.blocks):
            if i in predictors:
                prev_decision = torch.ones_like(x[:, 1:, :1]) if policy is None else policy[:, 1:]
                keep = self.sample_keep_decision(predictors[i](x[:, 1:], prev_decision), prev_decision)
                locations.append(BlockRecord(None, keep.shape[1], 0, 1.0 - ratios[i], keep.mean((1, 2))))
                policy = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
            if policy is None:
                x = run_block(block, x, with_cp=self.with_cp)
            else:
                # A pruned token keeps its input, as at inference; the blend passes gradient to the policy.
                x = policy * run_block(block, x, policy, with_cp=self.with_cp) + (1 - policy) * x
        return x, locations

    def _forward_gathered(self, x: torch.Tensor) -> tuple[torch.Tensor, list[BlockRecord]]:
        """Inference: per image only the top-k tokens by keep score run; the others keep their value."""
        batch, num_tokens, _ = x.shape
        num_patches = num_tokens - 1
        grid = x
        kept_index = None  # (B, 1 + k) grid positions of the tokens in x; the class token stays first.
        predictors = dict(zip(self.pruning_locs, self.score_predictor))
        ratios = dict(zip(self.pruning_locs, self.keep_ratios))
        locations = []
        for i, block in enumerate(self.blocks):
            num_keep = int(num_patches * ratios[i]) if i in ratios else num_patches
            # With nothing to drop (rho = 1) the dense path runs unchanged.
            if i in ratios and num_keep >= x.shape[1] - 1:
                locations.append(BlockRecord(None if kept_index is None else kept_index[:, 1:] - 1, num_patches, 0,
                                             1.0 - ratios[i]))
            if num_keep < x.shape[1] - 1:
                log_probs = predictors[i](x[:, 1:], torch.ones_like(x[:, 1:, :1]))
                ranking = log_probs[..., 0].topk(num_keep, dim=1).indices + 1
                selection = torch.cat([torch.zeros_like(ranking[:, :1]), ranking], dim=1)
                if kept_index is None:
                    kept_index = torch.arange(num_tokens, device=x.device).expand(batch, -1)
                grid = _scatter_tokens(grid, kept_index, x)
                kept_index = kept_index.gather(1, selection)
                x = _gather_tokens(x, selection)
                # Grid positions of the patch tokens that run from here on.
                locations.append(BlockRecord(kept_index[:, 1:] - 1, num_patches, 0, 1.0 - ratios[i]))
            x = run_block(block, x, with_cp=self.with_cp)
        return (x if kept_index is None else _scatter_tokens(grid, kept_index, x)), locations

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + h * w, C)``: class token, then the grid.

        h, w = ceil(H / 16), ceil(W / 16). Training takes the masked path.
        """
        return self._tokens_and_locations(x)[0]

    def _tokens_and_locations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[BlockRecord]]:
        """:meth:`forward_features`, and what each pruning location kept."""
        x = self.patch_embed(x)
        batch, height, width, channels = x.shape
        pos_embed = resample_abs_pos_embed(self.pos_embed, new_size=(height, width),
                                           old_size=self.patch_embed.grid_size, num_prefix_tokens=1)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, height * width, channels)], dim=1)
        x = self.pos_drop(x + pos_embed)
        x, locations = self._forward_masked(x) if self.training and self.pruning_locs else self._forward_gathered(x)
        return self.norm(x), locations

    def _forward_with_record(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ForwardRecord]:
        """Images ``(B, C, H, W)`` -> the pyramid levels of ``out_indices``, full size (every token), and the
        record: one stage, the stride-16 token grid (tokens as 1x1 windows), one block per pruning location."""
        height, width = self.patch_embed.dynamic_feat_size(x.shape[-2:])
        tokens, locations = self._tokens_and_locations(x)
        feature_map = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], self.embed_dims, height, width)
        record = ForwardRecord(tuple(x.shape[2:]), (StageRecord((height, width), 1, PATCH_SIZE, tuple(locations)), ))
        return tuple(self.pyramid(feature_map)), record

    def auxiliary_losses(self, record: ForwardRecord) -> dict[str, torch.Tensor]:
        """``loss_keep_ratio`` (weighted) of the training pass that made ``record``; {} otherwise."""
        fractions, _ = record.keep_ratio_terms()
        if not fractions:
            return {}
        # The configured keep ratios as targets, exactly (the record holds 1 - ratio).
        return {'loss_keep_ratio': self.keep_ratio_loss_weight * keep_ratio_loss(fractions, self.keep_ratios)}
