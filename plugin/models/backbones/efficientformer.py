"""EfficientFormer backbone for dense prediction, and what EfficientFormerV2 shares with it.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed" (Li et al.,
NeurIPS 2022). A conv stem (two 3x3 stride-2 conv-BN-ReLU), 4D MetaBlocks
(pooling token mixer ``pool(x) - x``, conv-BN MLP, LayerScale) with strided
conv-BN downsampling between stages, and MHSA MetaBlocks on the tokens of the
last stage's final ``num_vit`` blocks.

Built from timm's EfficientFormer parts (stem, downsampling, 4D MetaBlock, MLP,
LayerScale), with timm's parameter names. Written here, because dense prediction
needs what timm's and the authors' classification modules lack:

- attention whose relative-position bias works at any feature-map size, in two
  ``bias_mode``s. ``'official_dense'`` is the authors' detection/segmentation
  backbone: a separate ``attention_biases_seg`` table laid out for one image
  size (800 for detection, 512 for segmentation), gathered into its
  query-key matrix and resized bicubically to the actual one on every forward.
  ``'geometric'`` resamples the classification table itself over (|dy|, |dx|)
  offsets to the feature map's size, so its trained values carry over;
- output norms (``GroupNorm(1, C)`` as in the authors' dense backbones),
  ``frozen_stages``, ``norm_eval``, ``with_cp``, Conv-BN folding (``fuse()``) and
  checkpoint loading that converts the authors', timm's and mmpretrain's keys.
"""
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_init
from mmengine.registry import MODELS
from timm.layers import DropPath, LayerScale, Mlp, calculate_drop_path_rates
from timm.layers.norm_act import BatchNormAct2d
from timm.models.efficientformer import (
    ConvMlpWithNorm,
    Downsample,
    EfficientFormer_depth,
    EfficientFormer_width,
    MetaBlock2d,
    Stem4,
)
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..utils.arch import resolve_arch
from ..utils.blocks import freeze, run_block
from ..utils.checkpoint import PretrainedInitMixin, StateDict
from ..utils.export_mode import group_norm_by_channel_means, is_exporting
from .efficientformer_convert import convert_efficientformer_keys

BIAS_MODES = ('official_dense', 'geometric')
ARCH_SETTINGS = {
    arch: dict(embed_dims=EfficientFormer_width[arch], depths=EfficientFormer_depth[arch], num_vit=num_vit)
    for arch, num_vit in (('l1', 1), ('l3', 4), ('l7', 8))
}


def relative_offset_index(query_hw: tuple[int, int], key_hw: tuple[int, int], query_stride: int,
                          row_length: int, device: torch.device | None = None) -> torch.Tensor:
    """``(Nq, Nk)`` table index ``|dy| * row_length + |dx|`` of every query-key pair.

    Query ``(qy, qx)`` sits at ``(query_stride * qy, query_stride * qx)`` of the key grid.
    """
    def grid(hw: tuple[int, int], step: int) -> torch.Tensor:
        rows, cols = (torch.arange(n, device=device) * step for n in hw)
        return torch.stack(torch.meshgrid(rows, cols, indexing='ij')).flatten(1)

    (qy, qx), (ky, kx) = grid(query_hw, query_stride), grid(key_hw, 1)
    return (qy[:, None] - ky[None]).abs() * row_length + (qx[:, None] - kx[None]).abs()


class RelativeBiasAttention(BaseModule):
    """Base of the attention modules: a per-head additive bias indexed by the
    (|dy|, |dx|) offset of a query and a key token, for feature maps of any size.

    Args:
        num_heads (int): Attention heads.
        bias_mode (str): 'official_dense' or 'geometric' (see the module docstring).
        table_side (int): Side of the key grid the table is laid out for.
        query_stride (int): Queries sit on every ``query_stride``-th key position.
    """

    def __init__(self, num_heads: int, bias_mode: str, table_side: int, query_stride: int = 1,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if bias_mode not in BIAS_MODES:
            raise ValueError(f'bias_mode must be one of {BIAS_MODES}, got {bias_mode!r}')
        self.bias_mode = bias_mode
        self.num_heads = num_heads
        self.table_side = table_side
        self.query_stride = query_stride
        table = nn.Parameter(torch.zeros(num_heads, table_side**2))
        if bias_mode == 'official_dense':
            # The authors' name, so that their dense checkpoints load as they are.
            self.attention_biases_seg = table
            query_side = math.ceil(table_side / query_stride)
            self.register_buffer(
                'table_pair_index',
                relative_offset_index((query_side, query_side), (table_side, table_side),
                                      math.ceil(table_side / query_side), table_side),
                persistent=False)
        else:
            self.attention_biases = table
        self._cached_bias: tuple[tuple, torch.Tensor] | None = None

    def attention_bias(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> torch.Tensor:
        """``(num_heads, Nq, Nk)`` bias for queries on ``query_hw`` and keys on ``key_hw``."""
        # Inference reuses the bias of the last input size; training needs its graph, and an export would
        # bake a cached bias into its graph as a constant (or cache a traced stand-in).
        reuse = not (self.training or torch.is_grad_enabled() or is_exporting())
        size_key = (tuple(query_hw), tuple(key_hw))
        if reuse and self._cached_bias is not None and self._cached_bias[0] == size_key:
            return self._cached_bias[1]
        if self.bias_mode == 'official_dense':
            bias = self._official_dense_bias(query_hw, key_hw)
        else:
            bias = self._geometric_bias(query_hw, key_hw)
        if reuse:
            self._cached_bias = (size_key, bias)
        return bias

    def _official_dense_bias(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> torch.Tensor:
        pairs = self.attention_biases_seg[:, self.table_pair_index]
        size = (query_hw[0] * query_hw[1], key_hw[0] * key_hw[1])
        return F.interpolate(pairs[None], size=size, mode='bicubic', align_corners=False)[0]

    def _geometric_bias(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> torch.Tensor:
        side = self.table_side
        table = self.attention_biases.view(1, self.num_heads, side, side)
        # An export resamples at every size (at the table's own size an identity), so that the size stays a variable.
        if is_exporting() or tuple(key_hw) != (side, side):
            # Corners aligned: offset 0 (a token and itself) and the largest offset keep their values.
            table = F.interpolate(table, size=tuple(key_hw), mode='bicubic', align_corners=True)
        index = relative_offset_index(query_hw, key_hw, self.query_stride, key_hw[1], table.device)
        return table.reshape(self.num_heads, -1)[:, index]

    def train(self, mode: bool = True) -> 'RelativeBiasAttention':
        self._cached_bias = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cached_bias = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached_bias = None
        super()._load_from_state_dict(*args, **kwargs)


class Attention(RelativeBiasAttention):
    """timm's EfficientFormer MHSA (same parameters) on a token grid of any size."""

    def __init__(self, dim: int, bias_mode: str, table_side: int, key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: float = 4.) -> None:
        super().__init__(num_heads, bias_mode, table_side)
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.qkv = nn.Linear(dim, (2 * key_dim + self.val_dim) * num_heads)
        self.proj = nn.Linear(self.val_dim * num_heads, dim)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        """x: ``(B, H*W, C)`` tokens of an ``hw_shape`` grid."""
        batch, tokens, _ = x.shape
        # Explicit sizes, not -1: an empty batch has no size to infer.
        qkv = self.qkv(x).reshape(batch, tokens, self.num_heads, 2 * self.key_dim + self.val_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        # Written out as timm does: on the CPU, SDPA with a float mask is slower at these sizes.
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias(hw_shape, hw_shape)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.val_dim))


class AttentionMetaBlock(BaseModule):
    """timm's ``MetaBlock1d`` (same parameters), whose attention is told the token grid's shape."""

    def __init__(self, dim: int, bias_mode: str, table_side: int, mlp_ratio: float = 4., proj_drop: float = 0.,
                 drop_path: float = 0., layer_scale_init_value: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, bias_mode, table_side)
        self.ls1 = LayerScale(dim, layer_scale_init_value)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x), hw_shape)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class EfficientFormerStage(BaseModule):
    """Downsampling, 4D MetaBlocks, then ``num_vit`` attention MetaBlocks on the flattened tokens."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, num_vit: int, downsample: bool,
                 bias_mode: str, table_side: int, drop_path_rates: Sequence[float], pool_size: int = 3,
                 mlp_ratio: float = 4., proj_drop: float = 0., layer_scale_init_value: float = 1e-5,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.num_conv_blocks = depth - num_vit
        self.downsample = Downsample(in_channels, out_channels) if downsample else nn.Identity()
        self.blocks = ModuleList()
        for i in range(depth):
            common = dict(mlp_ratio=mlp_ratio, proj_drop=proj_drop, drop_path=drop_path_rates[i],
                          layer_scale_init_value=layer_scale_init_value)
            if i < self.num_conv_blocks:
                self.blocks.append(MetaBlock2d(out_channels, pool_size=pool_size, **common))
            else:
                self.blocks.append(AttentionMetaBlock(out_channels, bias_mode, table_side, **common))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks[:self.num_conv_blocks]:
            x = run_block(block, x, with_cp=self.with_cp)
        if self.num_conv_blocks == len(self.blocks):
            return x
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks[self.num_conv_blocks:]:
            tokens = run_block(block, tokens, (height, width), with_cp=self.with_cp)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


def check_num_vit(num_vit: int, depths: Sequence[int]) -> None:
    """The 3D MHSA blocks replace the last blocks of the last stage: at most ``depths[-1]`` of them."""
    if not 0 <= num_vit <= depths[-1]:
        raise ValueError(f'num_vit must lie in [0, depths[-1]={depths[-1]}], got {num_vit}')


def conv_block_counts(depths: Sequence[int], num_vit: int) -> list[int]:
    """4D MetaBlocks per stage: every block, except the last stage's final ``num_vit`` (3D MHSA ones)."""
    check_num_vit(num_vit, depths)
    return [*depths[:-1], depths[-1] - num_vit]


def stage_depths(num_conv: Sequence[int], num_vit: int) -> list[int]:
    """Blocks per stage of 4D MetaBlock counts and ``num_vit`` 3D ones at the end: the inverse of
    :func:`conv_block_counts`."""
    return [*num_conv[:-1], num_conv[-1] + num_vit]


def last_stage_table_side(img_size: int, num_stages: int) -> int:
    """Side of the last stage's attention-bias grid for an ``img_size`` image (stride ``2**(num_stages + 1)``)."""
    return math.ceil(img_size / 2**(num_stages + 1))


class EfficientFormerBase(PretrainedInitMixin, BaseModule):
    """What the EfficientFormer backbones share: four stages with optional output
    norms, freezing, ``norm_eval``, checkpoint loading and Conv-BN folding.

    A subclass builds ``self.stem`` and ``self.stages``, then calls
    :meth:`_add_output_norms`. ``convert_keys`` (published layouts -> ours) and
    ``fusable_pairs`` (module type -> its (conv, BatchNorm) attribute pairs) are
    EfficientFormer's; a subclass built from other modules overrides them.
    """
    # A classification checkpoint has no output norms and, for 'official_dense', no dense bias tables: both
    # then stay at their initialisation (the tables at zero, as the authors start them).
    optional_key_groups = (r'^norm\d+\.', r'\.attention_biases_seg$')
    convert_keys: Callable[[StateDict], StateDict] = staticmethod(convert_efficientformer_keys)
    fusable_pairs: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
        Stem4: (('conv1', 'norm1'), ('conv2', 'norm2')),
        Downsample: (('conv', 'norm'),),
        ConvMlpWithNorm: (('fc1', 'norm1'), ('fc2', 'norm2')),
    }

    def __init__(self, num_stages: int, bias_mode: str, out_indices: Sequence[int], frozen_stages: int,
                 norm_eval: bool, init_cfg: dict | None) -> None:
        super().__init__(init_cfg=init_cfg)
        if bias_mode not in BIAS_MODES:
            raise ValueError(f'bias_mode must be one of {BIAS_MODES}, got {bias_mode!r}')
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty subset of {tuple(range(num_stages))}, '
                             f'got {tuple(out_indices)}')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must lie in [-1, {num_stages}], got {frozen_stages}')
        self.bias_mode = bias_mode
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

    @staticmethod
    def bias_image_size(bias_mode: str, dense_img_size: int, pretrain_img_size: int) -> int:
        """The image size the attention-bias tables are laid out for: the dense-prediction
        size ('official_dense', the authors' detection/segmentation tables) or the
        classification size ('geometric', the ImageNet table)."""
        return dense_img_size if bias_mode == 'official_dense' else pretrain_img_size

    def _add_output_norms(self, channels: Sequence[int], out_norm_cfg: dict | None) -> None:
        for i in self.out_indices:
            norm = build_norm_layer(out_norm_cfg, channels[i])[1] if out_norm_cfg else nn.Identity()
            self.add_module(f'norm{i}', norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage outputs ``(B, C_i, H / 2**(i+2), W / 2**(i+2))`` for ``i`` in ``out_indices``."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                exportable = is_exporting() and isinstance(norm, nn.GroupNorm)
                outs.append(group_norm_by_channel_means(norm, x) if exportable else norm(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> 'EfficientFormerBase':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _freeze_stages(self) -> None:
        frozen = [self.stem] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        freeze(frozen)

    def default_init(self) -> None:
        """timm's classification initialisation (conv layers keep PyTorch's default); ``init_weights`` then
        applies ``init_cfg`` (``PretrainedInitMixin``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)

    def checkpoint_filter_fn(self, state_dict: StateDict) -> StateDict:
        """Published keys -> ours; in 'official_dense' mode without the classification bias tables,
        which the authors' dense backbones ignore too."""
        state_dict = self.convert_keys(state_dict)
        if self.bias_mode == 'official_dense':
            state_dict = {k: v for k, v in state_dict.items() if not k.endswith('.attention_biases')}
        return state_dict

    def checkpoint_mismatch_hint(self, state_dict: StateDict) -> str | None:
        own = self.state_dict()
        if self.bias_mode == 'geometric' and any(k.endswith('attention_biases_seg') for k in state_dict):
            return "It is a dense-prediction checkpoint of the authors' backbone: use bias_mode='official_dense'."
        if any(key in own and value.shape != own[key].shape for key, value in state_dict.items()):
            return 'Check arch and the bias table sizes (pretrain_img_size, dense_img_size).'
        return None

    def checkpoint_target(self) -> str:
        return f'{type(self).__name__}(bias_mode={self.bias_mode!r})'

    def fuse(self) -> 'EfficientFormerBase':
        """Fold every BatchNorm into the conv before it, for deployment (eval mode only)."""
        if self.training:
            raise RuntimeError('fuse() folds BatchNorm running statistics: call .eval() first')
        for module in list(self.modules()):
            for conv_name, norm_name in self.fusable_pairs.get(type(module), ()):
                norm = getattr(module, norm_name)
                if not isinstance(norm, _BatchNorm):
                    continue
                setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), norm))
                # timm's BatchNormAct2d also holds the activation (and dropout) that follow the norm.
                setattr(module, norm_name,
                        nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity())
        return self


@MODELS.register_module()
class EfficientFormer(EfficientFormerBase):
    """EfficientFormer (L1, L3, L7) backbone for mmdet/mmseg, returning four stage outputs.

    Args:
        arch (str, optional): 'l1', 'l3' or 'l7' sets ``embed_dims``, ``depths``
            and ``num_vit``; an explicit one of them must then agree with it. Without
            ``arch`` they default to L1's.
        embed_dims (Sequence[int]): Channels per stage.
        depths (Sequence[int]): Blocks per stage.
        num_vit (int): Attention blocks at the end of the last stage.
        in_channels (int): Input image channels.
        mlp_ratio (float): MLP hidden width / block width.
        pool_size (int): Window of the pooling token mixer.
        bias_mode (str): 'official_dense' (the authors' dense backbone: a zero-
            initialised ``attention_biases_seg`` table resized to each input) or
            'geometric' (the classification table resampled to each input).
        pretrain_img_size (int): Image side of the classification tables
            ('geometric'; 224 -> 7x7 grid).
        dense_img_size (int): Image side the authors laid their dense tables out
            for ('official_dense'): 800 for detection (25x25), 512 for
            segmentation (16x16).
        out_indices (Sequence[int]): Stages whose outputs are returned.
        out_norm_cfg (dict, optional): Norm applied to each output; None for none.
        frozen_stages (int): -1 none; 0 the stem; i the stem and stages 0..i-1.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training.
        with_cp (bool): Gradient checkpointing per block.
        drop_rate (float): Dropout in the MLPs.
        drop_path_rate (float): Stochastic depth, rising linearly over all blocks.
        layer_scale_init_value (float): Initial LayerScale.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...,
            prefix=None, allow_partial=False)`` loads any published EfficientFormer
            checkpoint (see :meth:`load_pretrained`).
    """

    def __init__(self,
                 arch: str | None = None,
                 embed_dims: Sequence[int] | None = None,
                 depths: Sequence[int] | None = None,
                 num_vit: int | None = None,
                 in_channels: int = 3,
                 mlp_ratio: float = 4.,
                 pool_size: int = 3,
                 bias_mode: str = 'official_dense',
                 pretrain_img_size: int = 224,
                 dense_img_size: int = 800,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_norm_cfg: dict | None = dict(type='GN', num_groups=1),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-5,
                 init_cfg: dict | None = None) -> None:
        embed_dims, depths, num_vit = resolve_arch(
            arch, ARCH_SETTINGS, dict(embed_dims=embed_dims, depths=depths, num_vit=num_vit),
            ARCH_SETTINGS['l1']).values()
        if len(embed_dims) != len(depths):
            raise ValueError(f'embed_dims {tuple(embed_dims)} and depths {tuple(depths)} must have '
                             f'one entry per stage')
        check_num_vit(num_vit, depths)
        super().__init__(len(depths), bias_mode, out_indices, frozen_stages, norm_eval, init_cfg)

        table_side = last_stage_table_side(
            self.bias_image_size(bias_mode, dense_img_size, pretrain_img_size), len(depths))
        self.stem = Stem4(in_channels, embed_dims[0])
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = ModuleList([
            EfficientFormerStage(
                in_channels=embed_dims[max(i - 1, 0)],
                out_channels=embed_dims[i],
                depth=depths[i],
                num_vit=num_vit if i == len(depths) - 1 else 0,
                downsample=i > 0,
                bias_mode=bias_mode,
                table_side=table_side,
                drop_path_rates=drop_path_rates[i],
                pool_size=pool_size,
                mlp_ratio=mlp_ratio,
                proj_drop=drop_rate,
                layer_scale_init_value=layer_scale_init_value,
                with_cp=with_cp) for i in range(len(depths))
        ])
        self._add_output_norms(embed_dims, out_norm_cfg)
