"""SparseFPN: mmdet's FPN computed only on the tiles that a sparse backbone computed."""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmdet.models.necks import FPN
from mmengine.registry import MODELS

from ..utils.records import KeptTiles
from ..utils.tile_conv import SparseFeatures, check_kept_tiles, check_tile_layer, run_on_kept

# What the output of a skipped tile is: the output convolution's input (the summed laterals), zero, or the next
# coarser output level upsampled (nearest).
FILL_SKIPPED = ('laterals', 'zero', 'coarser')


@MODELS.register_module()
class SparseFPN(FPN):
    """mmdet's ``FPN`` (same arguments, state_dict and, without kept tiles, result) whose lateral and output
    convolutions run only on the kept tiles of each input level.

    ``forward(inputs, kept_tiles)`` takes per input level the tiles its backbone stage computed
    (:meth:`ForwardRecord.kept_tiles <plugin.models.utils.records.ForwardRecord.kept_tiles>`; None for a
    dense level). On a level with kept tiles:

    - the lateral 1x1 convolutions and mmdet's top-down sum run on whole maps (a ninth of the output
      convolution's cost per pixel; on the demo's detector, laterals on kept tiles only, zero elsewhere,
      cost 0.10 bbox AP at ratio 0.5 before fine-tuning);
    - the output 3x3 convolution runs on the kept tiles, reading the summed laterals around them, so a
      kept tile's output is mmdet's FPN's exactly;
    - a skipped tile's output is ``fill_skipped``: ``'laterals'`` (default) the summed laterals there, the
      output convolution's input, which costs nothing more (fine-tuned sparse, the demo's learned-scorer
      detector scored 0.491-0.498 bbox AP at ratio 0.5 with it in two runs, 0.458 with zero); ``'zero'``
      zero; ``'coarser'`` the next coarser output level upsampled as the top-down path upsamples (the
      coarsest backbone level has no coarser level: zero there).

    Extra levels (P6, ...) are computed as mmdet computes them, on whole maps. From the kept fraction in
    ``DENSE_FALLBACK_FRACTION`` for the maps' device on, a layer runs on the whole map and is then masked,
    which gives the same result. The result is a :class:`~plugin.models.utils.tile_conv.SparseFeatures`: the
    output maps with the tiles of each (None for dense and extra levels), which the sparse heads compute on.

    In an mmseg config (Semantic FPN) it stands in for mmseg's ``FPN``, which computes the same at the
    arguments Semantic FPN uses; its arguments are mmdet's (``end_level`` inclusive, no
    ``extra_convs_on_inputs``).

    Args:
        fill_skipped (str): ``'laterals'``, ``'zero'`` or ``'coarser'``, see above.
        The other arguments are those of mmdet's ``FPN``. Norm layers must be GroupNorm (statistics over
        the kept pixels) or none.
    """

    def __init__(self, *args, fill_skipped: str = 'laterals', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if fill_skipped not in FILL_SKIPPED:
            raise ValueError(f'fill_skipped must be one of {FILL_SKIPPED} (what a skipped tile\'s output is), got '
                             f'{fill_skipped!r}')
        self.fill_skipped = fill_skipped
        for name, convs in (('lateral_convs', self.lateral_convs), ('fpn_convs', self.fpn_convs)):
            for index, conv in enumerate(convs[:len(self.lateral_convs)]):
                check_tile_layer(conv, f'SparseFPN.{name}[{index}]')

    def forward(self, inputs: Sequence[torch.Tensor],
                kept_tiles: Sequence[KeptTiles | None] | None = None) -> SparseFeatures:
        """Feature maps of ``inputs`` (one per ``in_channels``), computed on ``kept_tiles`` (one entry per input,
        None for a dense one; None: all dense, which is mmdet's ``FPN.forward``)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'SparseFPN takes {len(self.in_channels)} feature maps (in_channels '
                             f'{self.in_channels}), got {len(inputs)}')
        if kept_tiles is not None and len(kept_tiles) != len(inputs):
            raise ValueError(f'SparseFPN takes one kept-tiles entry (or None) per input feature map: '
                             f'{len(inputs)} maps, {len(kept_tiles)} entries')
        if kept_tiles is None or all(tiles is None for tiles in kept_tiles):
            return SparseFeatures(super().forward(tuple(inputs)), (None, ) * self.num_outs)
        for level, (feature, tiles) in enumerate(zip(inputs, kept_tiles)):
            if tiles is not None:
                check_kept_tiles(tiles, feature, f'SparseFPN input {level}')
        level_tiles = tuple(kept_tiles[self.start_level:self.backbone_end_level])

        # Laterals on whole maps: a 1x1 convolution costs a ninth of the output one, and with them a kept
        # tile's output is the dense FPN's exactly (its halo reads true laterals, not zeros).
        laterals = [lateral_conv(inputs[i + self.start_level]) for i, lateral_conv in enumerate(self.lateral_convs)]
        used_backbone_levels = len(laterals)
        for i in range(used_backbone_levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._upsample(laterals[i], laterals[i - 1])

        outs: list[torch.Tensor] = [None] * used_backbone_levels
        # Coarsest first: with 'coarser' a skipped tile takes the coarser output level.
        for i in range(used_backbone_levels - 1, -1, -1):
            if level_tiles[i] is None:
                outs[i] = self.fpn_convs[i](laterals[i])
            else:
                # The fill only where a level has skipped tiles: 'coarser' upsamples a whole map for it.
                outs[i] = run_on_kept([self.fpn_convs[i]], laterals[i], level_tiles[i]).to_map(
                    self._fill(i, laterals, outs))
        # mmcv's RoIAlign reads its input's memory as NCHW: a batch's (or an export's) tiles come back as views.
        outs = [out.contiguous() for out in outs]

        if self.num_outs > len(outs):
            if not self.add_extra_convs:
                for i in range(self.num_outs - used_backbone_levels):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                extra_source = {'on_input': inputs[self.backbone_end_level - 1], 'on_lateral': laterals[-1],
                                'on_output': outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used_backbone_levels](extra_source))
                for i in range(used_backbone_levels + 1, self.num_outs):
                    source = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](source))
        return SparseFeatures(outs, level_tiles + (None, ) * (self.num_outs - used_backbone_levels))

    def _fill(self, level: int, laterals: list[torch.Tensor], outs: list[torch.Tensor]) -> float | torch.Tensor:
        """What the skipped tiles of output ``level`` hold (``outs`` holds the coarser levels already)."""
        if self.fill_skipped == 'laterals':
            return laterals[level]
        if self.fill_skipped == 'zero' or level == len(laterals) - 1:
            return 0.
        return self._upsample(outs[level + 1], laterals[level])

    def _upsample(self, coarse: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``coarse`` upsampled to ``like``'s size as mmdet's top-down path upsamples."""
        if 'scale_factor' in self.upsample_cfg:
            return F.interpolate(coarse, **self.upsample_cfg)
        return F.interpolate(coarse, size=like.shape[2:], **self.upsample_cfg)
