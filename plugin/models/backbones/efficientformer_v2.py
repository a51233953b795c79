"""EfficientFormerV2 backbone for dense prediction.

Paper: "Rethinking Vision Transformers for MobileNet Size and Speed" (Li et al.,
ICCV 2023). Four stages of conv-FFN blocks (1x1 conv-BN, 3x3 depth-wise conv-BN,
1x1 conv-BN, LayerScale) after a two-conv stem; the last ``num_vit`` blocks of
stages 3 and 4 add 4D attention (talking heads, a depth-wise local value
branch; on a stride-2 copy of the map in stage 3), and the downsampling into
stage 4 adds an attention with local-global queries.

Built from timm's EfficientFormerV2 parts (stem, ConvNorm, conv MLP, local-global
query, LayerScale), with timm's parameter names. The attention modules, and the
block and downsampling that hold them, are written here: timm's and the authors'
fix the token count and the bias table to one input size, and the authors'
dense ones still assume even feature maps. Bias modes, output norms, freezing,
checkpoint loading and Conv-BN folding are shared with :mod:`.efficientformer`.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS
from timm.layers import ConvNormAct, DropPath, LayerScale2d, calculate_drop_path_rates, to_ntuple
from timm.models.efficientformer_v2 import (
    ConvMlpWithNorm,
    ConvNorm,
    EfficientFormer_depth,
    EfficientFormer_expansion_ratios,
    EfficientFormer_width,
    LocalGlobalQuery,
    Stem4,
)

from ..utils.arch import resolve_arch
from ..utils.blocks import run_block
from .efficientformer import EfficientFormerBase, RelativeBiasAttention
from .efficientformer_convert import convert_efficientformerv2_keys

ARCH_SETTINGS = {
    name.lower(): dict(embed_dims=EfficientFormer_width[name], depths=EfficientFormer_depth[name],
                       mlp_ratios=EfficientFormer_expansion_ratios[name], num_vit=num_vit)
    for name, num_vit in (('S0', 2), ('S1', 2), ('S2', 4), ('L', 6))
}


class Attention2d(RelativeBiasAttention):
    """timm's ``Attention2d`` (same parameters) for feature maps of any size.

    With ``stride`` it attends on a strided depth-wise conv of the map and
    resizes the result back to the input's size.
    """

    def __init__(self, dim: int, bias_mode: str, table_side: int, key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 4, stride: int | None = None, act_layer: type = nn.GELU) -> None:
        super().__init__(num_heads, bias_mode, table_side)
        self.key_dim = key_dim
        self.value_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        value_channels = self.value_dim * num_heads
        self.stride_conv = ConvNorm(dim, dim, kernel_size=3, stride=stride, groups=dim) if stride else None
        self.q = ConvNorm(dim, key_dim * num_heads)
        self.k = ConvNorm(dim, key_dim * num_heads)
        self.v = ConvNorm(dim, value_channels)
        self.v_local = ConvNorm(value_channels, value_channels, kernel_size=3, groups=value_channels)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, kernel_size=1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, kernel_size=1)
        self.act = act_layer()
        self.proj = ConvNorm(value_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        h, w = x.shape[-2:]
        # Explicit sizes, not -1: an empty batch has no size to infer.
        q = self.q(x).reshape(batch, self.num_heads, self.key_dim, h * w).transpose(-2, -1)
        k = self.k(x).reshape(batch, self.num_heads, self.key_dim, h * w)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(batch, self.num_heads, self.value_dim, h * w).transpose(-2, -1)

        attn = (q @ k) * self.scale + self.attention_bias((h, w), (h, w))
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = (attn @ v).transpose(2, 3).reshape(batch, self.num_heads * self.value_dim, h, w) + v_local
        if self.stride_conv is not None:
            # To the input's own size: an odd side is one less than stride * h.
            x = F.interpolate(x, size=(height, width), mode='bilinear', align_corners=False)
        return self.proj(self.act(x))


class Attention2dDownsample(RelativeBiasAttention):
    """timm's ``Attention2dDownsample`` (same parameters) for feature maps of any size:
    queries from every second position (local-global), keys and values from all."""

    def __init__(self, dim: int, out_dim: int, bias_mode: str, table_side: int, key_dim: int = 16,
                 num_heads: int = 8, attn_ratio: int = 4, act_layer: type = nn.GELU) -> None:
        super().__init__(num_heads, bias_mode, table_side, query_stride=2)
        self.key_dim = key_dim
        self.value_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        value_channels = self.value_dim * num_heads
        self.q = LocalGlobalQuery(dim, key_dim * num_heads)
        self.k = ConvNorm(dim, key_dim * num_heads)
        self.v = ConvNorm(dim, value_channels)
        self.v_local = ConvNorm(value_channels, value_channels, kernel_size=3, stride=2, groups=value_channels)
        self.act = act_layer()
        self.proj = ConvNorm(value_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        q = self.q(x)
        h, w = q.shape[-2:]
        q = q.reshape(batch, self.num_heads, self.key_dim, h * w).transpose(-2, -1)
        k = self.k(x).reshape(batch, self.num_heads, self.key_dim, height * width)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(batch, self.num_heads, self.value_dim, height * width).transpose(-2, -1)

        attn = (q @ k) * self.scale + self.attention_bias((h, w), (height, width))
        x = (attn.softmax(dim=-1) @ v).transpose(2, 3).reshape(batch, self.num_heads * self.value_dim, h, w) + v_local
        return self.proj(self.act(x))


class Downsample(BaseModule):
    """timm's V2 ``Downsample`` (same parameters): strided conv-BN, plus the any-size attention if asked."""

    def __init__(self, in_channels: int, out_channels: int, use_attn: bool, bias_mode: str, table_side: int,
                 act_layer: type = nn.GELU) -> None:
        super().__init__()
        self.conv = ConvNorm(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.attn = Attention2dDownsample(in_channels, out_channels, bias_mode, table_side,
                                          act_layer=act_layer) if use_attn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out if self.attn is None else self.attn(x) + out


class EfficientFormerV2Block(BaseModule):
    """timm's ``EfficientFormerV2Block`` (same parameters) with the any-size attention."""

    def __init__(self, dim: int, mlp_ratio: float, use_attn: bool, bias_mode: str, table_side: int,
                 attn_stride: int | None = None, proj_drop: float = 0., drop_path: float = 0.,
                 layer_scale_init_value: float = 1e-5, act_layer: type = nn.GELU) -> None:
        super().__init__()
        self.token_mixer = None
        if use_attn:
            self.token_mixer = Attention2d(dim, bias_mode, table_side, stride=attn_stride, act_layer=act_layer)
            self.ls1 = LayerScale2d(dim, layer_scale_init_value)
            self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = ConvMlpWithNorm(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                                   norm_layer=nn.BatchNorm2d, drop=proj_drop, mid_conv=True)
        self.ls2 = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class EfficientFormerV2Stage(BaseModule):
    """Downsampling (with attention from the fourth stage on), then blocks whose last ``num_attn`` attend."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, mlp_ratios: Sequence[float],
                 num_attn: int, attn_stride: int | None, downsample: bool, downsample_attn: bool,
                 bias_mode: str, block_table_side: int, downsample_table_side: int,
                 drop_path_rates: Sequence[float], proj_drop: float = 0., layer_scale_init_value: float = 1e-5,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.downsample = Downsample(in_channels, out_channels, downsample_attn, bias_mode,
                                     downsample_table_side) if downsample else nn.Identity()
        self.blocks = ModuleList([
            EfficientFormerV2Block(
                out_channels,
                mlp_ratio=mlp_ratios[i],
                use_attn=i >= depth - num_attn,
                bias_mode=bias_mode,
                table_side=block_table_side,
                attn_stride=attn_stride,
                proj_drop=proj_drop,
                drop_path=drop_path_rates[i],
                layer_scale_init_value=layer_scale_init_value) for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = run_block(block, x, with_cp=self.with_cp)
        return x


@MODELS.register_module()
class EfficientFormerV2(EfficientFormerBase):
    """EfficientFormerV2 (S0, S1, S2, L) backbone for mmdet/mmseg, returning four stage outputs.

    Args:
        arch (str, optional): 's0', 's1', 's2' or 'l' sets ``embed_dims``,
            ``depths``, ``mlp_ratios`` and ``num_vit``; an explicit one of them must
            then agree with it. Without ``arch`` they default to S0's.
        embed_dims (Sequence[int]): Channels per stage.
        depths (Sequence[int]): Blocks per stage.
        mlp_ratios (Sequence): Per stage, one MLP ratio or one per block.
        num_vit (int): Blocks with attention at the end of stages 3 and 4.
        bias_mode (str): 'official_dense' (the authors' dense backbone) or
            'geometric' (the classification tables resampled to each input).
        pretrain_img_size (int): Image side of the classification tables ('geometric').
        dense_img_size (int): Image side the authors laid their dense tables out
            for ('official_dense'): 800 for detection, 512 for segmentation.
        out_norm_cfg (dict, optional): Norm applied to each output; the authors' V2
            dense backbones have none.
        The other arguments are those of :class:`EfficientFormer`.
    """
    convert_keys = staticmethod(convert_efficientformerv2_keys)
    fusable_pairs = {ConvNorm: (('conv', 'bn'),), ConvNormAct: (('conv', 'bn'),)}

    def __init__(self,
                 arch: str | None = None,
                 embed_dims: Sequence[int] | None = None,
                 depths: Sequence[int] | None = None,
                 mlp_ratios: Sequence[float | Sequence[float]] | None = None,
                 num_vit: int | None = None,
                 in_channels: int = 3,
                 bias_mode: str = 'official_dense',
                 pretrain_img_size: int = 224,
                 dense_img_size: int = 800,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_norm_cfg: dict | None = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-5,
                 init_cfg: dict | None = None) -> None:
        embed_dims, depths, mlp_ratios, num_vit = resolve_arch(
            arch, ARCH_SETTINGS, dict(embed_dims=embed_dims, depths=depths, mlp_ratios=mlp_ratios, num_vit=num_vit),
            ARCH_SETTINGS['s0']).values()
        if not len(embed_dims) == len(depths) == len(mlp_ratios):
            raise ValueError(f'embed_dims {tuple(embed_dims)}, depths {tuple(depths)} and mlp_ratios '
                             f'{tuple(mlp_ratios)} must have one entry per stage')
        mlp_ratios = [to_ntuple(depth)(ratio) for depth, ratio in zip(depths, mlp_ratios)]
        if any(len(ratios) != depth for ratios, depth in zip(mlp_ratios, depths)):
            raise ValueError(f'mlp_ratios {mlp_ratios} must give one ratio per block of each stage '
                             f'(depths {tuple(depths)})')
        if len(depths) != 4:
            raise ValueError(f'EfficientFormerV2 has 4 stages (attention in stages 3 and 4), '
                             f'got depths {tuple(depths)}')
        if not 0 <= num_vit <= min(depths[2:]):
            raise ValueError(f'num_vit must lie in [0, {min(depths[2:])}]: the attention blocks are the last num_vit '
                             f'of stages 3 and 4 (depths {tuple(depths[2:])}), got {num_vit}')
        super().__init__(len(depths), bias_mode, out_indices, frozen_stages, norm_eval, init_cfg)

        img_size = self.bias_image_size(bias_mode, dense_img_size, pretrain_img_size)
        self.stem = Stem4(in_channels, embed_dims[0], act_layer=nn.GELU, norm_layer=nn.BatchNorm2d)
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = ModuleList()
        for i, depth in enumerate(depths):
            # Stage i's map has stride 2**(i+2); the third stage attends on a stride-2 copy of it.
            attn_stride = 2 if i == 2 else None
            self.stages.append(EfficientFormerV2Stage(
                in_channels=embed_dims[max(i - 1, 0)],
                out_channels=embed_dims[i],
                depth=depth,
                mlp_ratios=mlp_ratios[i],
                num_attn=num_vit if i >= 2 else 0,
                attn_stride=attn_stride,
                downsample=i > 0,
                downsample_attn=i >= 3,
                bias_mode=bias_mode,
                block_table_side=math.ceil(img_size / (2**(i + 2) * (attn_stride or 1))),
                downsample_table_side=math.ceil(img_size / 2**(i + 1)),
                drop_path_rates=drop_path_rates[i],
                proj_drop=drop_rate,
                layer_scale_init_value=layer_scale_init_value,
                with_cp=with_cp))
        self._add_output_norms(embed_dims, out_norm_cfg)
