"""EfficientFormer supernet for latency-driven slimming.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed" (Li et al.,
NeurIPS 2022), Sec. 4. Every block of a stage is a MetaPath that chooses
between a MetaBlock and the identity; the last stage ends in MetaPaths of MHSA
(3D) MetaBlocks; each stage picks its width from a list. Each choice has
learned architecture logits, sampled with Gumbel-Softmax and trained jointly
with the weights; their probabilities are the importance scores that
``plugin.slimming`` trades against measured latency.

Width is a soft channel mask over the widest layers (channels past a candidate
width are zeroed with that candidate's Gumbel weight): the candidates share
weights, need no separate layers, and the slimmed network keeps the leading
channels, which is what the mask trained. The blocks are EfficientFormer's own
(timm's ``MetaBlock2d``, ``Downsample``, ``Stem4`` and our ``AttentionMetaBlock``).
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS
from timm.layers import calculate_drop_path_rates
from timm.models.efficientformer import Downsample, MetaBlock2d, Stem4

from ..utils.blocks import run_block
from .efficientformer import (
    AttentionMetaBlock,
    EfficientFormerBase,
    check_num_vit,
    conv_block_counts,
    last_stage_table_side,
    stage_depths,
)


def supernet_search_space(width_choices: Sequence[Sequence[int]], depths: Sequence[int], num_vit: int) -> dict:
    """The supernet's search space, checked, as ``plugin.slimming`` takes it: per stage the distinct
    candidate widths in increasing order, MetaPaths per stage, 3D MetaPaths at the end."""
    widths = [sorted({int(w) for w in stage}) for stage in width_choices]
    if len(widths) != len(depths) or any(not stage or stage[0] <= 0 for stage in widths):
        raise ValueError(f'width_choices needs one non-empty list of positive widths per stage '
                         f'({len(depths)} stages), got {[list(stage) for stage in width_choices]}')
    check_num_vit(num_vit, depths)
    return dict(width_choices=widths, depths=[int(d) for d in depths], num_vit=int(num_vit))


class GumbelChoice(BaseModule):
    """Learned logits over ``num_choices`` options, mixed by Gumbel-Softmax weights.

    Training draws soft Gumbel-Softmax weights at ``temperature``; evaluation uses
    the plain softmax, so validation of the supernet is deterministic.
    """

    def __init__(self, num_choices: int) -> None:
        super().__init__()
        self.arch_logits = nn.Parameter(torch.zeros(num_choices))
        self.temperature = 1.

    def choice_weights(self) -> torch.Tensor:
        if self.training:
            return F.gumbel_softmax(self.arch_logits, tau=self.temperature, hard=False)
        return self.arch_logits.softmax(0)

    def probabilities(self) -> torch.Tensor:
        return self.arch_logits.detach().softmax(0)


class MetaPath(GumbelChoice):
    """A MetaBlock or the identity: ``w_block * block(x) + w_identity * x``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__(num_choices=2)
        self.block = block

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        block_weight, identity_weight = self.choice_weights()
        return block_weight * self.block(x, *args) + identity_weight * x

    def importance(self) -> float:
        """Probability of the block branch."""
        return float(self.probabilities()[0])


class WidthChoice(GumbelChoice):
    """A stage width from ``widths`` as a soft mask over the widest stage's channels."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__(num_choices=len(widths))
        self.widths = tuple(widths)
        masks = torch.zeros(len(widths), widths[-1])
        for i, width in enumerate(widths):
            masks[i, :width] = 1.
        self.register_buffer('masks', masks, persistent=False)

    def channel_mask(self) -> torch.Tensor:
        """``(C_max,)`` mask: the choice weights summed over the candidates that keep each channel."""
        return self.choice_weights() @ self.masks

    def importance(self) -> list[float]:
        """``P(width >= widths[i])`` per candidate: how much the channels added by ``widths[i]`` are used."""
        return self.probabilities().flip(0).cumsum(0).flip(0).tolist()


class SupernetStage(BaseModule):
    """Downsampling, 4D MetaPaths, then 3D MetaPaths on the flattened tokens; all at a chosen width."""

    def __init__(self, in_channels: int, widths: Sequence[int], num_conv: int, num_vit: int, downsample: bool,
                 bias_mode: str, table_side: int, drop_path_rates: Sequence[float], pool_size: int = 3,
                 mlp_ratio: float = 4., proj_drop: float = 0., layer_scale_init_value: float = 1e-5,
                 with_cp: bool = False) -> None:
        super().__init__()
        channels = widths[-1]
        self.with_cp = with_cp
        self.downsample = Downsample(in_channels, channels) if downsample else nn.Identity()
        self.width = WidthChoice(widths)
        common = [dict(mlp_ratio=mlp_ratio, proj_drop=proj_drop, drop_path=rate,
                       layer_scale_init_value=layer_scale_init_value) for rate in drop_path_rates]
        self.conv_paths = ModuleList(
            [MetaPath(MetaBlock2d(channels, pool_size=pool_size, **common[i])) for i in range(num_conv)])
        self.vit_paths = ModuleList([
            MetaPath(AttentionMetaBlock(channels, bias_mode, table_side, **common[num_conv + i]))
            for i in range(num_vit)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One width draw per forward, re-applied after every path so masked channels stay off.
        mask = self.width.channel_mask()
        x = self.downsample(x) * mask.view(1, -1, 1, 1)
        for path in self.conv_paths:
            x = run_block(path, x, with_cp=self.with_cp) * mask.view(1, -1, 1, 1)
        if not self.vit_paths:
            return x
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for path in self.vit_paths:
            tokens = run_block(path, tokens, (height, width), with_cp=self.with_cp) * mask
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


@MODELS.register_module()
class EfficientFormerSupernet(EfficientFormerBase):
    """EfficientFormer supernet: MetaPaths and width choices with Gumbel-Softmax architecture weights.

    Runs as a backbone of mmdet/mmseg (four stage outputs at the widest widths,
    unused channels masked). :meth:`importance` reads the learned scores and
    :meth:`subnet_config` turns a kept subset into ``EfficientFormer`` arguments.

    Args:
        width_choices (Sequence[Sequence[int]]): Candidate widths per stage; the
            widest builds the layers.
        depths (Sequence[int]): MetaPaths per stage.
        num_vit (int): MHSA MetaPaths at the end of the last stage.
        temperature (float): Initial Gumbel-Softmax temperature (annealed by
            ``GumbelTemperatureHook``).
        Others: as :class:`EfficientFormer`.
    """

    def __init__(self,
                 width_choices: Sequence[Sequence[int]] = ((32, 40, 48), (64, 80, 96), (160, 192, 224),
                                                           (320, 384, 448)),
                 depths: Sequence[int] = (3, 2, 6, 4),
                 num_vit: int = 2,
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
                 temperature: float = 5.,
                 init_cfg: dict | None = None) -> None:
        space = supernet_search_space(width_choices, depths, num_vit)
        super().__init__(len(depths), bias_mode, out_indices, frozen_stages, norm_eval, init_cfg)
        self.width_choices = tuple(tuple(widths) for widths in space['width_choices'])
        self.depths = tuple(depths)
        self.num_vit = num_vit

        widest = [widths[-1] for widths in width_choices]
        table_side = last_stage_table_side(
            self.bias_image_size(bias_mode, dense_img_size, pretrain_img_size), len(depths))
        self.stem = Stem4(in_channels, widest[0])
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        last = len(depths) - 1
        num_conv = conv_block_counts(depths, num_vit)
        self.stages = ModuleList([
            SupernetStage(
                in_channels=widest[max(i - 1, 0)],
                widths=self.width_choices[i],
                num_conv=num_conv[i],
                num_vit=num_vit if i == last else 0,
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
        self._add_output_norms(widest, out_norm_cfg)
        self.set_temperature(temperature)

    def set_temperature(self, temperature: float) -> None:
        """Gumbel-Softmax temperature of every architecture choice."""
        if temperature <= 0:
            raise ValueError(f'temperature must be positive, got {temperature}')
        for module in self.modules():
            if isinstance(module, GumbelChoice):
                module.temperature = float(temperature)

    def importance(self) -> dict[str, list]:
        """Learned importance scores.

        Returns:
            dict: ``conv_paths`` (per stage, the block probability of each 4D
            MetaPath), ``vit_paths`` (of each 3D MetaPath in order) and
            ``widths`` (per stage, ``P(width >= w)`` for each candidate ``w``).
        """
        return dict(conv_paths=[[path.importance() for path in stage.conv_paths] for stage in self.stages],
                    vit_paths=[path.importance() for path in self.stages[-1].vit_paths],
                    widths=[stage.width.importance() for stage in self.stages])

    def subnet_config(self, conv_keep: Sequence[Sequence[bool]], vit_keep: Sequence[bool],
                      embed_dims: Sequence[int]) -> dict:
        """``EfficientFormer`` arguments (``depths``, ``embed_dims``, ``num_vit``) of a sub-network.

        Args:
            conv_keep: Per stage, whether each 4D MetaPath keeps its block.
            vit_keep: Whether each 3D MetaPath keeps its block.
            embed_dims: One width per stage, each from that stage's ``width_choices``.
        """
        num_conv = [len(stage.conv_paths) for stage in self.stages]
        if [len(keep) for keep in conv_keep] != num_conv or len(vit_keep) != self.num_vit:
            raise ValueError(f'conv_keep needs {num_conv} flags per stage and vit_keep {self.num_vit}, got '
                             f'{[len(keep) for keep in conv_keep]} and {len(vit_keep)}')
        if len(embed_dims) != len(self.width_choices) or any(
                width not in widths for width, widths in zip(embed_dims, self.width_choices)):
            raise ValueError(f'embed_dims must pick one width per stage from {self.width_choices}, '
                             f'got {tuple(embed_dims)}')
        num_vit = sum(map(bool, vit_keep))
        depths = stage_depths([sum(map(bool, keep)) for keep in conv_keep], num_vit)
        return dict(depths=depths, embed_dims=[int(w) for w in embed_dims], num_vit=num_vit)
