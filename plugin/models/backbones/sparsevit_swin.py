"""SparseViT: a Swin Transformer that skips the computation of unimportant windows.

Paper: "SparseViT: Revisiting Activation Sparsity for Efficient High-Resolution
Vision Transformer" (Chen et al., CVPR 2023). The module tree, arguments and
state_dict keys are those of mmdet's ``SwinTransformer``, so every mmdet Swin
checkpoint loads as it is.

Differences from a dense Swin, all needed for window sparsity:
- LayerNorm, (shifted-)window attention and FFN run per window, on windows
  gathered from the stage's token buffer (``plugin.models.utils.window_ops``).
- Each stage ranks its windows once, by the L2 norm of the per-token mean
  absolute activation entering its first pruned block, separately for the
  regular and the shifted grid; a block with ratio r runs the top
  ``floor((1 - r) * nW)`` windows of its grid and copies the others through.
- Everything a block needs (k, index tables) follows from the input shape and
  the ratios, so a forward pass has static shapes and no host synchronisation:
  it can be captured as a CUDA graph or compiled with ``fullgraph=True``.
"""
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging, build_dropout
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from mmengine.registry import MODELS
from mmengine.utils import to_2tuple
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table_simple
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..utils.arch import resolve_arch
from ..utils.blocks import freeze, run_block
from ..utils.checkpoint import PretrainedInitMixin, StateDict, select_prefix
from ..utils.export_mode import is_exporting
from ..utils.records import BlockRecord, ForwardRecord, StageRecord
from ..utils.sparsity import WindowSparseBackbone, normalize_pruning_ratios, num_kept_windows
from ..utils.token_pruning import TokenKeepPredictor, keep_ratio_loss, nested_keep_decisions, sample_logistic_noise
from ..utils.window_ops import (
    WindowGrid,
    batched_token_positions,
    build_window_grid,
    gather_rows,
    pad_to_mask_alignment,
    padded_shape,
    scatter_rows_,
    window_l2_scores,
    windows_by_score,
)

# cuDNN's fused attention takes a 49-token window with an additive mask about 4x
# slower than the memory-efficient kernel on an H100 (fp16); leave it out.
WINDOW_ATTENTION_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]

ARCH_SETTINGS = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
# Keys of the official Swin release that no dense backbone has: the classifier, its norm, the cached shift masks.
_CLASSIFICATION_KEY = re.compile(r'^(head|norm)\.|\.attn_mask$')


def layer_norm_in_input_precision(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, but under autocast a LayerNorm runs in ``x``'s half precision.

    Autocast runs LayerNorm in fp32: a cast of the input and an fp32 output twice
    its size, only for the next linear layer to cast it back. The half-precision
    kernel accumulates in fp32 anyway; on an H100 this is a fifth of the fp16 forward.
    """
    half = x.dtype in (torch.float16, torch.bfloat16)
    if not (half and isinstance(norm, nn.LayerNorm) and torch.is_autocast_enabled(x.device.type)):
        return norm(x)
    with torch.autocast(x.device.type, enabled=False):
        weight = None if norm.weight is None else norm.weight.to(x.dtype)
        bias = None if norm.bias is None else norm.bias.to(x.dtype)
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


class WindowMSA(BaseModule):
    """Window multi-head self-attention with Swin's relative position bias.

    Same parameters and buffer as mmdet's ``WindowMSA``; runs on any subset of
    windows through ``scaled_dot_product_attention`` with the bias (and the
    shift mask of the windows it is given) as additive mask.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads)**-0.5
        self.attn_drop_rate = attn_drop_rate

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        coords = torch.stack(torch.meshgrid(
            torch.arange(window_size), torch.arange(window_size), indexing='ij')).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
        self.register_buffer('relative_position_index',
                             relative[0] * (2 * window_size - 1) + relative[1])

        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def init_weights(self) -> None:
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``(num_heads, N, N)`` bias between the tokens of a window."""
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)

    def attention_mask(self, shift_mask: torch.Tensor | None, num_windows: int,
                       dtype: torch.dtype) -> torch.Tensor:
        """Relative-position bias plus the shift mask, ``(num_heads, N, N)`` or ``(num_windows, num_heads, N, N)``.

        Built in SDPA's aligned layout (see ``pad_to_mask_alignment``) and in the
        attention's dtype, so that the largest tensor of a block is written once.
        """
        tokens = self.window_size**2
        mask = pad_to_mask_alignment(self.relative_position_bias().to(dtype))
        if shift_mask is not None:
            mask = mask + shift_mask.to(dtype).unsqueeze(2)
            batch = num_windows // shift_mask.shape[1]
            mask = mask.expand(batch, -1, -1, -1, -1).reshape(num_windows, *mask.shape[2:])
        return mask[..., :tokens]

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``(B * k, N, C)``; shift_mask: ``(B or 1, k, N, Np)`` in the padded layout of
        ``WindowGrid.attn_mask``, or None."""
        num_windows, tokens, channels = x.shape
        qkv = self.qkv(x).view(num_windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        with sdpa_kernel(WINDOW_ATTENTION_BACKENDS):
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=self.attention_mask(shift_mask, num_windows, q.dtype),
                dropout_p=self.attn_drop_rate if self.training else 0., scale=self.scale)
        x = x.transpose(1, 2)
        if is_exporting():
            # With grad enabled, torch.onnx decomposes SDPA into a contiguous result where the trace saw the fused
            # kernel's transposed one, so the view recorded for the reshape would fail: an explicit copy (Identity).
            x = x.clone(memory_format=torch.contiguous_format)
        x = x.reshape(num_windows, tokens, channels)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(BaseModule):
    """Holds the attention of a (shifted-)window block under mmdet's key names.

    The shift itself is folded into the stage's window index tables, so this
    module only adds stochastic depth to the attention branch.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 shift_size: int = 0,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 dropout_layer: dict = dict(type='DropPath', drop_prob=0.),
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        if not 0 <= shift_size < window_size:
            raise ValueError(f'shift_size must lie in [0, window_size={window_size}), got {shift_size}')
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale,
                               attn_drop_rate, proj_drop_rate)
        self.drop = build_dropout(dropout_layer)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """windows: ``(B, k, N, C)``; shift_mask: ``(B or 1, k, N, Np)`` (see ``WindowMSA.forward``) or None."""
        batch, num_windows, tokens, channels = windows.shape
        out = self.w_msa(windows.reshape(-1, tokens, channels), shift_mask)
        # Stochastic depth drops a whole image's branch, as in the dense model.
        return self.drop(out.view(batch, num_windows, tokens, channels))


class SparseSwinBlock(BaseModule):
    """A Swin block that runs on a batch of gathered windows ``(B, k, N, C)``."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 window_size: int = 7,
                 shift: bool = False,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ShiftWindowMSA(
            embed_dims=embed_dims,
            num_heads=num_heads,
            window_size=window_size,
            shift_size=window_size // 2 if shift else 0,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate))
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(
            embed_dims=embed_dims,
            feedforward_channels=feedforward_channels,
            num_fcs=2,
            ffn_drop=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            act_cfg=act_cfg,
            add_identity=True)

    @property
    def shift_size(self) -> int:
        return self.attn.shift_size

    def _forward_windows(self, windows: torch.Tensor, shift_mask: torch.Tensor | None,
                         valid: torch.Tensor | None) -> torch.Tensor:
        x = layer_norm_in_input_precision(self.norm1, windows)
        if valid is not None:
            # mmdet pads *after* norm1, so padded tokens enter attention as zeros.
            x = x.masked_fill(~valid.unsqueeze(-1), 0.)
        x = windows + self.attn(x, shift_mask)
        return self.ffn(layer_norm_in_input_precision(self.norm2, x), identity=x)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """windows ``(B, k, N, C)``; shift_mask ``(B or 1, k, N, Np)`` and valid broadcastable to ``(B, k, N)``."""
        return run_block(self._forward_windows, windows, shift_mask, valid, with_cp=self.with_cp)


class TokenPatchMerging(PatchMerging):
    """mmcv's ``PatchMerging``, computed in the token layout for Swin's setting (2x2, stride 2, corner padding).

    mmcv permutes the map to NCHW and unfolds it: two passes over the map and an
    im2col kernel. Grouping the 2x2 neighbours with a view and one permute gives the
    same tensor in one pass. Same parameters; other settings run mmcv's forward.
    """

    def forward(self, x: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        H, W = input_size
        corner_padding = self.adaptive_padding is not None and self.adaptive_padding.padding == 'corner'
        swin_setting = (tuple(self.sampler.kernel_size) == tuple(self.sampler.stride) == (2, 2)
                        and tuple(self.sampler.dilation) == (1, 1) and tuple(self.sampler.padding) == (0, 0))
        if not swin_setting or not (corner_padding or (H % 2 == 0 and W % 2 == 0)):
            return super().forward(x, input_size)
        batch, _, channels = x.shape
        x = F.pad(x.view(batch, H, W, channels), (0, 0, 0, W % 2, 0, H % 2))
        out_h, out_w = x.shape[1] // 2, x.shape[2] // 2
        # nn.Unfold's channel order: input channel, then kernel row, then kernel column.
        x = x.view(batch, out_h, 2, out_w, 2, channels).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(batch, out_h * out_w, 4 * channels)
        if self.norm is not None:
            x = layer_norm_in_input_precision(self.norm, x)
        return self.reduction(x), (out_h, out_w)


class SparseSwinBlockSequence(BaseModule):
    """One stage: blocks over a flat padded token buffer, then patch merging."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 depth: int,
                 window_size: int = 7,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float | list[float] = 0.,
                 downsample: BaseModule | None = None,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 scorer: str = 'l2',
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        drop_path_rates = drop_path_rate if isinstance(drop_path_rate, list) else [drop_path_rate] * depth
        self.window_size = window_size
        self.blocks = ModuleList([
            SparseSwinBlock(
                embed_dims=embed_dims,
                num_heads=num_heads,
                feedforward_channels=feedforward_channels,
                window_size=window_size,
                shift=i % 2 == 1,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rates[i],
                act_cfg=act_cfg,
                norm_cfg=norm_cfg,
                with_cp=with_cp) for i in range(depth)
        ])
        self.downsample = downsample
        # DynamicViT's predictor, pooled per window, replaces the L2 ranking when scorer='learned'.
        self.window_scorer = TokenKeepPredictor(embed_dims) if scorer == 'learned' else None

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int], ratios: Sequence[float]
                ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, tuple[int, int], tuple[BlockRecord, ...]]:
        """Run the stage on tokens ``x`` ``(B, H*W, C)`` with one pruning ratio per block.

        Returns the downsampled tokens and shape, the stage output and shape, and
        per block what it ran.
        """
        batch, _, channels = x.shape
        H, W = hw_shape
        Hp, Wp = padded_shape(hw_shape, self.window_size)
        tokens_per_image = Hp * Wp
        buffer = F.pad(x.view(batch, H, W, channels), (0, 0, 0, Wp - W, 0, Hp - H))
        # The blocks write their windows back into this buffer in place.
        buffer = buffer.reshape(batch * tokens_per_image, channels)

        shift_sizes = sorted({block.shift_size for block in self.blocks})
        # A compiled graph computes the (pure) tables itself; eager mode reuses cached ones.
        build_grid = build_window_grid.__wrapped__ if torch.compiler.is_compiling() else build_window_grid
        grids: dict[int, WindowGrid] = {
            shift: build_grid(hw_shape, self.window_size, shift, x.device) for shift in shift_sizes}
        rankings: dict[int, torch.Tensor] | None = None
        # Learned scorer in training: per grid, each window's keep log-odds plus one noise draw (see _run_nested).
        perturbed_scores: dict[int, torch.Tensor] | None = None
        block_records: list[BlockRecord] = []
        for block, ratio in zip(self.blocks, ratios):
            grid = grids[block.shift_size]
            num_windows = grid.token_index.shape[0]
            if ratio > 0 and rankings is None:
                tokens = buffer.view(batch, tokens_per_image, channels)
                if self.window_scorer is None:
                    rankings = self._rank_windows(tokens.detach(), hw_shape, grids)
                else:
                    # A copy: the predictor keeps its input for backward, the blocks overwrite the buffer.
                    log_odds = self._learned_window_log_odds(tokens.clone(), hw_shape, grids)
                    rankings = {shift: windows_by_score(scores) for shift, scores in log_odds.items()}
                    # A frozen scorer (eval mode: freeze_scorer) ranks as at inference, so the blocks keep
                    # top-k sets that a sparse neck and heads train on.
                    if self.training and self.window_scorer.training:
                        perturbed_scores = {shift: scores + sample_logistic_noise(scores)
                                            for shift, scores in log_odds.items()}
            if perturbed_scores is not None and ratio > 0:
                kept_fraction = self._run_nested(block, ratio, buffer, grid, perturbed_scores[block.shift_size],
                                                 tokens_per_image)
                block_records.append(BlockRecord(None, num_windows, block.shift_size, ratio, kept_fraction))
                continue
            if rankings is None:
                kept = None
                window_tokens = grid.token_index.expand(batch, -1, -1)
                shift_mask = grid.all_windows_attn_mask()
                valid = grid.valid
            else:
                kept = rankings[block.shift_size][:, :num_kept_windows(num_windows, ratio)]
                window_tokens = grid.token_index[kept]
                shift_mask = None if grid.attn_mask is None else grid.attn_mask[kept]
                valid = None if grid.valid is None else grid.valid[kept]
            block_records.append(BlockRecord(kept, num_windows, block.shift_size, ratio))
            if window_tokens.shape[1] == 0:
                continue
            rows = batched_token_positions(window_tokens, tokens_per_image)
            windows = gather_rows(buffer, rows).view(*window_tokens.shape, channels)
            out = block(windows, shift_mask, valid)
            scatter_rows_(buffer, rows, out.reshape(-1, channels))

        out = buffer.view(batch, Hp, Wp, channels)[:, :H, :W].reshape(batch, H * W, channels)
        if self.downsample is None:
            return out, hw_shape, out, hw_shape, tuple(block_records)
        x_down, down_hw_shape = self.downsample(out, hw_shape)
        return x_down, down_hw_shape, out, hw_shape, tuple(block_records)

    def _inside_map(self, hw_shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        """``(Hp*Wp,)`` True for tokens of the unpadded map; None when nothing is padded."""
        Hp, Wp = padded_shape(hw_shape, self.window_size)
        if (Hp, Wp) == tuple(hw_shape):
            return None
        rows = torch.arange(Hp, device=device)
        cols = torch.arange(Wp, device=device)
        return ((rows < hw_shape[0])[:, None] & (cols < hw_shape[1])[None, :]).view(-1)

    def _rank_windows(self, tokens: torch.Tensor, hw_shape: tuple[int, int],
                      grids: dict[int, WindowGrid]) -> dict[int, torch.Tensor]:
        """Rank every grid's windows once, from the padded tokens ``(B, Hp*Wp, C)`` entering the first pruned block."""
        activity = tokens.abs().mean(-1)
        inside = self._inside_map(hw_shape, tokens.device)
        if inside is not None:
            # Padded tokens count as zero activation, as in the reference implementation.
            activity = activity.masked_fill(~inside, 0.)
        return {shift: windows_by_score(window_l2_scores(activity, grid.token_index))
                for shift, grid in grids.items()}

    def _learned_window_log_odds(self, tokens: torch.Tensor, hw_shape: tuple[int, int],
                                 grids: dict[int, WindowGrid]) -> dict[int, torch.Tensor]:
        """Per grid ``(B, nW)`` keep-vs-drop log-odds: the predictor's token log-probabilities averaged per window."""
        inside = self._inside_map(hw_shape, tokens.device)
        policy = tokens.new_ones(tokens.shape[:2]) if inside is None else inside.to(tokens.dtype).expand(
            tokens.shape[0], -1)
        token_log_probs = self.window_scorer(tokens, policy.unsqueeze(-1))
        window_log_odds = {}
        for shift, grid in grids.items():
            per_token = token_log_probs[:, grid.token_index]
            weights = torch.ones_like(grid.token_index, dtype=tokens.dtype) if grid.valid is None \
                else grid.valid.to(tokens.dtype)
            pooled = ((per_token * weights[..., None]).sum(2) / weights.sum(1)[:, None]).log_softmax(-1)
            window_log_odds[shift] = pooled[..., 0] - pooled[..., 1]
        return window_log_odds

    def _run_nested(self, block: SparseSwinBlock, ratio: float, buffer: torch.Tensor, grid: WindowGrid,
                    perturbed_scores: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
        """Training with the learned scorer: every window runs, a hard decision picks its output or its input.

        Decisions follow the inference rule: one ranking per stage and grid (the perturbed
        log-odds), each block keeps a prefix of it (``nested_keep_decisions``), so a dropped
        window stays dropped. They are straight-through, so the task loss trains the
        predictor, and each block's kept fraction, returned ``(B,)``, enters the keep-ratio loss with its own
        target.
        """
        decision = nested_keep_decisions(perturbed_scores, 1.0 - ratio)
        batch, channels = decision.shape[0], buffer.shape[1]
        window_tokens = grid.token_index.expand(batch, -1, -1)
        rows = batched_token_positions(window_tokens, tokens_per_image)
        windows = gather_rows(buffer, rows).view(*window_tokens.shape, channels)
        out = block(windows, grid.all_windows_attn_mask(), grid.valid)
        mixed = windows + decision[..., None, None].to(out.dtype) * (out - windows)
        scatter_rows_(buffer, rows, mixed.reshape(-1, channels))
        return decision.mean(1)


@MODELS.register_module()
class SparseViTSwin(PretrainedInitMixin, WindowSparseBackbone, BaseModule):
    """Swin Transformer with SparseViT window pruning, a drop-in for mmdet's ``SwinTransformer``.

    Args:
        pruning_ratios (float | list | str): One float for every block, or one entry per
            stage: a float for all its blocks or a list with one ratio per block,
            or a name of the paper's searched configurations of Swin-T ('cfg1',
            'cfg2', 'cfg3'). Ratios lie in [0, 1) and never decrease inside a stage. 0 = dense. A
            block keeps ``floor((1 - ratio) * nW)`` of its stage's nW windows, so a
            stage with few windows at the input size (e.g. one) keeps none at
            ratio 0.5; the forward pass warns when a block keeps no window.
        scorer (str): 'l2' ranks windows by activation norm (the paper); 'learned'
            by a DynamicViT-style predictor per stage, trained with nested hard
            decisions and ``loss_window_keep_ratio`` (see :meth:`auxiliary_losses`).
        keep_ratio_loss_weight (float): Weight of that loss.
        freeze_scorer (bool): With ``scorer='learned'``: the predictors get no
            gradient and rank in training as at inference (each block runs its
            top-k windows), to fine-tune the rest, e.g. with a sparse neck and
            heads (``SparseFPN``), on the windows inference will keep.
        arch (str, optional): 'tiny', 'small' or 'base' sets ``embed_dims``,
            ``depths`` and ``num_heads``; an explicit one of them must then agree
            with it. Without ``arch`` they default to Swin-T's (96, (2, 2, 6, 2),
            (3, 6, 12, 24)).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...,
            prefix=None, allow_partial=False)`` loads an mmdet/mmseg/mmdet3d
            checkpoint (the ``backbone.`` entries, or those under ``prefix``) or the
            official release (with ``convert_weights``); a checkpoint that does
            not fit raises an error naming the keys (see
            :mod:`plugin.models.utils.checkpoint`).
        The other arguments are those of mmdet's ``SwinTransformer``.
    """

    # A checkpoint may lack these groups (a classification one has no output norms, an L2-scorer one no
    # learned scorer; the index buffers follow from the window size): they stay at their initialisation.
    optional_key_groups = (r'^norm\d+\.', r'\.window_scorer\.', r'relative_position_index$')

    def __init__(self,
                 pretrain_img_size: int | tuple[int, int] = 224,
                 in_channels: int = 3,
                 embed_dims: int | None = None,
                 patch_size: int = 4,
                 window_size: int = 7,
                 mlp_ratio: int = 4,
                 depths: Sequence[int] | None = None,
                 num_heads: Sequence[int] | None = None,
                 strides: Sequence[int] = (4, 2, 2, 2),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 patch_norm: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 use_abs_pos_embed: bool = False,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 pretrained: str | None = None,
                 convert_weights: bool = False,
                 frozen_stages: int = -1,
                 pruning_ratios: float | Sequence | str = 0.,
                 scorer: str = 'l2',
                 keep_ratio_loss_weight: float = 2.,
                 freeze_scorer: bool = False,
                 arch: str | None = None,
                 init_cfg: dict | None = None) -> None:
        embed_dims, depths, num_heads = resolve_arch(
            arch, ARCH_SETTINGS, dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads),
            ARCH_SETTINGS['tiny']).values()
        pretrain_img_size = self._check_pretrain_img_size(pretrain_img_size)
        if len(depths) != len(num_heads) or len(strides) != len(depths):
            raise ValueError(f'depths {tuple(depths)}, num_heads {tuple(num_heads)} and strides '
                             f'{tuple(strides)} must have one entry per stage')
        if strides[0] != patch_size:
            raise ValueError(f'strides[0] ({strides[0]}) must equal patch_size ({patch_size}): '
                             f'the patch embedding does not overlap')
        bad_indices = [i for i in out_indices if not 0 <= i < len(depths)]
        if bad_indices:
            raise ValueError(f'out_indices {tuple(out_indices)} must lie in [0, {len(depths)})')
        if scorer not in ('l2', 'learned'):
            raise ValueError(f"scorer must be 'l2' (the paper's activation norm) or 'learned' "
                             f"(a DynamicViT-style predictor), got {scorer!r}")
        if freeze_scorer and scorer != 'learned':
            raise ValueError(f"freeze_scorer=True freezes the learned window scorer; scorer={scorer!r} has none "
                             f"(use scorer='learned')")
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a str (a checkpoint path or URL) or None, got {pretrained!r}')
            if init_cfg is not None:
                raise ValueError('init_cfg and pretrained cannot be set at the same time')
            warnings.warn('pretrained is deprecated, use init_cfg=dict(type="Pretrained", checkpoint=...)')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        self.convert_weights = convert_weights
        self.frozen_stages = frozen_stages
        self.freeze_scorer = freeze_scorer
        self.out_indices = tuple(out_indices)
        self.use_abs_pos_embed = use_abs_pos_embed
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        self.depths = tuple(depths)
        self.window_size = window_size
        self.pruning_ratios = normalize_pruning_ratios(pruning_ratios, self.depths)

        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dims=embed_dims,
            conv_type='Conv2d',
            kernel_size=patch_size,
            stride=strides[0],
            norm_cfg=norm_cfg if patch_norm else None)
        if use_abs_pos_embed:
            self.pos_embed_shape = (pretrain_img_size[0] // patch_size, pretrain_img_size[1] // patch_size)
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, self.pos_embed_shape[0] * self.pos_embed_shape[1], embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        block_drop_path = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        channels = embed_dims
        for i, depth in enumerate(depths):
            downsample = None
            if i < len(depths) - 1:
                downsample = TokenPatchMerging(
                    in_channels=channels,
                    out_channels=2 * channels,
                    stride=strides[i + 1],
                    norm_cfg=norm_cfg if patch_norm else None)
            self.stages.append(SparseSwinBlockSequence(
                embed_dims=channels,
                num_heads=num_heads[i],
                feedforward_channels=mlp_ratio * channels,
                depth=depth,
                window_size=window_size,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=block_drop_path[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=downsample,
                act_cfg=act_cfg,
                norm_cfg=norm_cfg,
                with_cp=with_cp,
                scorer=scorer))
            if downsample is not None:
                channels = downsample.out_channels

        self.num_features = [int(embed_dims * 2**i) for i in range(len(depths))]
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])

    @staticmethod
    def _check_pretrain_img_size(size: int | Sequence[int]) -> tuple[int, int]:
        """mmdet's rule: an int, or a tuple (here also a list) of one or two ints."""
        if isinstance(size, (tuple, list)) and len(size) == 1:
            size = size[0]
        sides = to_2tuple(size)
        if isinstance(sides, (tuple, list)) and len(sides) == 2 and all(
                isinstance(side, int) and not isinstance(side, bool) for side in sides):
            return int(sides[0]), int(sides[1])
        raise ValueError(f'pretrain_img_size must be an int or a tuple of 1 or 2 ints, got {size!r}')

    def set_pruning_ratios(self, pruning_ratios: float | Sequence | str) -> None:
        """Change the per-block ratios (same forms and checks as the constructor argument)."""
        self.pruning_ratios = normalize_pruning_ratios(pruning_ratios, self.depths)

    def auxiliary_losses(self, record: ForwardRecord) -> dict[str, torch.Tensor]:
        """``loss_window_keep_ratio`` of the training pass that made ``record`` with the learned scorer; {} otherwise.

        The detectors and segmentors in ``plugin.models.detectors`` add it to their losses.
        """
        fractions, targets = record.keep_ratio_terms()
        if not fractions:
            return {}
        return {'loss_window_keep_ratio': self.keep_ratio_loss_weight * keep_ratio_loss(fractions, targets)}

    def train(self, mode: bool = True) -> 'SparseViTSwin':
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            for param in self.patch_embed.parameters():
                param.requires_grad = False
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
            self.drop_after_pos.eval()
        for i in range(1, self.frozen_stages + 1):
            freeze([self.stages[i - 1]] + ([getattr(self, f'norm{i - 1}')] if (i - 1) in self.out_indices else []))
        if self.freeze_scorer:
            freeze(stage.window_scorer for stage in self.stages)

    def default_init(self) -> None:
        """Swin's initialisation; ``init_weights`` then applies ``init_cfg`` (``PretrainedInitMixin``)."""
        if self.use_abs_pos_embed:
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, 1.0)
            elif isinstance(module, WindowMSA):
                module.init_weights()

    def checkpoint_filter_fn(self, state_dict: StateDict) -> StateDict:
        """A Swin backbone's weights (the official release's with ``convert_weights``) -> this model's:
        classification leftovers dropped, position tables resized."""
        if self.convert_weights:
            # Official Swin checkpoints name and order some weights differently; mmdet's converter knows how.
            from mmdet.models.backbones.swin import swin_converter
            state_dict = select_prefix(swin_converter(state_dict), 'backbone.')
        state_dict = OrderedDict((k, v) for k, v in state_dict.items() if not _CLASSIFICATION_KEY.search(k))
        own = self.state_dict()
        for key, value in list(state_dict.items()):
            if key not in own or own[key].shape == value.shape:
                continue
            if 'relative_position_bias_table' in key and value.shape[1] == own[key].shape[1]:
                state_dict[key] = resize_rel_pos_bias_table_simple(
                    value, (self.window_size, self.window_size), tuple(own[key].shape)).contiguous()
            elif key == 'absolute_pos_embed' and value.shape[-1] == own[key].shape[-1]:
                side = round(value.shape[1]**0.5)
                if side * side != value.shape[1]:
                    raise ValueError(f'absolute_pos_embed of the checkpoint has {value.shape[1]} positions, which '
                                     f'is no square grid: set pretrain_img_size to the checkpoint\'s image size')
                state_dict[key] = resample_pos_embed(value, (side, side), self.pos_embed_shape)
        return state_dict

    def checkpoint_mismatch_hint(self, state_dict: StateDict) -> str | None:
        if any(key.startswith('layers.') for key in state_dict) and not self.convert_weights:
            return 'Its keys are the official Swin release\'s (layers.*): set convert_weights=True.'
        depths = [1 + max((int(m[2]) for m in map(re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.').match,
                                                   state_dict) if m and int(m[1]) == i), default=-1)
                  for i in range(len(self.depths))]
        if depths != list(self.depths) and all(depths):
            return f'The checkpoint has {depths} blocks per stage, the model {list(self.depths)}: check arch/depths.'
        return None

    def stage_strides(self) -> list[int]:
        """Input pixels per token side at every stage, from the patch embedding and merging strides."""
        stride = self.patch_embed.projection.stride[0]
        strides = []
        for stage in self.stages:
            strides.append(stride)
            if stage.downsample is not None:
                stride *= stage.downsample.sampler.stride[0]
        return strides

    def _forward_with_record(self, x: torch.Tensor) -> tuple[list[torch.Tensor], ForwardRecord]:
        input_shape = tuple(x.shape[2:])
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            pos_embed = self.absolute_pos_embed
            if tuple(hw_shape) != self.pos_embed_shape:
                pos_embed = resample_pos_embed(pos_embed, self.pos_embed_shape, tuple(hw_shape))
            x = x + pos_embed
        x = self.drop_after_pos(x)

        outs, stages = [], []
        for i, (stage, stride) in enumerate(zip(self.stages, self.stage_strides())):
            x, hw_shape, out, out_hw_shape, blocks = stage(x, tuple(hw_shape), self.pruning_ratios[i])
            stages.append(StageRecord(tuple(out_hw_shape), stage.window_size, stride, blocks))
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.view(-1, *out_hw_shape, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        record = ForwardRecord(input_shape, tuple(stages))
        if not torch.compiler.is_compiling():
            self._warn_on_empty_blocks(record)
        return outs, record

    def _warn_on_empty_blocks(self, record: ForwardRecord) -> None:
        for index, stage in enumerate(record.stages):
            for block_index, block in enumerate(stage.blocks):
                if block.kept is not None and block.kept.shape[1] == 0:
                    warnings.warn(f'stage {index} has {block.num_windows} window(s) at this input size, so block '
                                  f'{block_index} at ratio {block.ratio:g} keeps floor({1 - block.ratio:g} x '
                                  f'{block.num_windows}) = 0 of them and is skipped: lower that stage\'s ratios or '
                                  f'use a larger input')


def resample_pos_embed(pos_embed: torch.Tensor, source_hw: tuple[int, int],
                       target_hw: tuple[int, int]) -> torch.Tensor:
    """``(1, h*w, C)`` absolute position embedding of a ``source_hw`` grid, resampled bicubically to ``target_hw``
    (timm's resampling, without its anti-aliasing, which mmdet's Swin does not apply)."""
    return resample_abs_pos_embed(pos_embed, new_size=list(target_hw), old_size=list(source_hw), num_prefix_tokens=0,
                                  antialias=False)
