"""mmdet3d's FCOS3D and PGD heads computed only on the tiles that a sparse backbone and neck computed."""
import torch
import torch.nn as nn
from mmcv.cnn import Scale
from mmdet.models.utils import multi_apply
from mmdet3d.models.dense_heads import FCOSMono3DHead, PGDHead
from mmengine.registry import MODELS

from ..utils.records import KeptTiles
from ..utils.tile_conv import KeptFeature, check_kept_tiles, check_tile_layer, kept_tiles_of, run_on_kept
from .skipped_positions import (
    SKIPPED_LOGIT,
    computed_positions,
    computed_positions_in_scope,
    finite_logits,
    only_computed_positions,
)


def _branch(prev_layers: nn.ModuleList | None, predictor: nn.Conv2d, feature: KeptFeature, tiles: KeptTiles,
            fill: float) -> torch.Tensor:
    """A prediction branch (its 3x3 ConvModules, then the 1x1 predictor) on the kept tiles; ``fill`` elsewhere.

    In NCHW memory, as mmdet3d's outputs (a batch's or an export's tiles come back as views).
    """
    return run_on_kept([*(prev_layers or []), predictor], feature, tiles).to_map(fill).contiguous()


class SparseMono3DHeadMixin:
    """What the sparse FCOS3D and PGD heads share: the conv towers and branches on kept tiles, and a loss that
    ignores the points of skipped tiles.

    On a level with kept tiles, the classification and regression towers and every branch run on the
    kept tiles only (a 3x3 layer after the first reads zeros around them: the previous layer exists on
    the kept tiles only), their GroupNorms with statistics over each image's kept pixels. A skipped
    point gets the classification logit ``-inf`` and 0 for every other output, so no prediction comes
    from it (its score is 0), and in training it is neither positive nor negative: its target is
    background and its logit one whose loss is exactly 0.
    """

    def _check_tile_layers(self) -> None:
        prevs = [('cls_convs', self.cls_convs), ('reg_convs', self.reg_convs), ('conv_cls_prev', self.conv_cls_prev)]
        prevs += [(f'conv_reg_prevs[{i}]', layers) for i, layers in enumerate(self.conv_reg_prevs) if layers]
        for name in ('conv_dir_cls_prev', 'conv_attr_prev', 'conv_centerness_prev', 'conv_depth_cls_prev'):
            if getattr(self, name, None) is not None:
                prevs.append((name, getattr(self, name)))
        prevs += [(f'conv_weight_prevs[{i}]', layers) for i, layers in enumerate(getattr(self, 'conv_weight_prevs', ()))
                  if layers]
        for name, layers in prevs:
            for index, layer in enumerate(layers):
                check_tile_layer(layer, f'{type(self).__name__}.{name}[{index}]')
        predictors = [(name, module) for name, module in self.named_children() if isinstance(module, nn.Conv2d)]
        for name in ('conv_regs', 'conv_weights'):
            predictors += [(f'{name}[{i}]', conv) for i, conv in enumerate(getattr(self, name, ()))]
        for name, conv in predictors:
            check_tile_layer(conv, f'{type(self).__name__}.{name}')

    def _sparse_outputs(self, x: torch.Tensor, tiles: KeptTiles) -> tuple:
        """AnchorFreeMono3DHead's and FCOSMono3DHead's outputs before decoding, on the kept tiles:
        (cls_score, bbox_pred, dir_cls_pred, attr_pred, centerness, cls_feat, reg_feat), the features as
        :class:`KeptFeature`."""
        check_kept_tiles(tiles, x, type(self).__name__)
        cls_feat = run_on_kept(self.cls_convs, x, tiles)
        reg_feat = run_on_kept(self.reg_convs, x, tiles)
        cls_score = _branch(self.conv_cls_prev, self.conv_cls, cls_feat, tiles, SKIPPED_LOGIT)
        bbox_pred = torch.cat([_branch(self.conv_reg_prevs[i], self.conv_regs[i], reg_feat, tiles, 0.)
                               for i in range(len(self.group_reg_dims))], dim=1)
        dir_cls_pred = attr_pred = None
        if self.use_direction_classifier:
            dir_cls_pred = _branch(self.conv_dir_cls_prev, self.conv_dir_cls, reg_feat, tiles, 0.)
        if self.pred_attrs:
            attr_pred = _branch(self.conv_attr_prev, self.conv_attr, cls_feat, tiles, 0.)
        centerness = _branch(self.conv_centerness_prev, self.conv_centerness,
                             reg_feat if self.centerness_on_reg else cls_feat, tiles, 0.)
        return cls_score, bbox_pred, dir_cls_pred, attr_pred, centerness, cls_feat, reg_feat

    def loss_by_feat(self, cls_scores: list[torch.Tensor], *args, **kwargs) -> dict:
        """mmdet3d's losses with the points of skipped tiles ignored (see :meth:`get_targets`)."""
        computed = [computed_positions(score, self.cls_out_channels) for score in cls_scores]
        with only_computed_positions(computed):
            return super().loss_by_feat(finite_logits(cls_scores), *args, **kwargs)

    def get_targets(self, points: list[torch.Tensor], *args, **kwargs) -> tuple:
        """mmdet3d's targets; inside ``loss_by_feat`` the points of skipped tiles are background: no positive,
        and with their logit ``IGNORED_LOGIT`` no classification loss."""
        labels_3d, *others = super().get_targets(points, *args, **kwargs)
        computed = computed_positions_in_scope()
        if computed is not None:
            labels_3d = [labels.masked_fill(~mask.reshape(-1), self.num_classes)
                         for labels, mask in zip(labels_3d, computed)]
        return (labels_3d, *others)


@MODELS.register_module()
class SparseFCOSMono3DHead(SparseMono3DHeadMixin, FCOSMono3DHead):
    """mmdet3d's ``FCOSMono3DHead`` (same arguments and weights) computed only on the kept tiles of its input
    (a :class:`~plugin.models.utils.tile_conv.SparseFeatures`); see :class:`SparseMono3DHeadMixin`. A level
    without kept tiles, or a plain tuple, runs mmdet3d's forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_tile_layers()

    def forward(self, x: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], ...]:
        return multi_apply(self.forward_single, x, self.scales, self.strides, kept_tiles_of(x))[:5]

    def forward_single(self, x: torch.Tensor, scale: Scale, stride: int, kept_tiles: KeptTiles | None = None
                       ) -> tuple:
        if kept_tiles is None:
            return super().forward_single(x, scale, stride)
        cls_score, bbox_pred, dir_cls_pred, attr_pred, centerness, cls_feat, reg_feat = self._sparse_outputs(
            x, kept_tiles)
        bbox_pred = self.bbox_coder.decode(bbox_pred, scale, stride, self.training, cls_score)
        # The features as mmdet3d returns them (FCOSMono3DHead.forward drops them): zero off the kept tiles.
        return cls_score, bbox_pred, dir_cls_pred, attr_pred, centerness, cls_feat.to_map(0.), reg_feat.to_map(0.)


@MODELS.register_module()
class SparsePGDHead(SparseMono3DHeadMixin, PGDHead):
    """mmdet3d's ``PGDHead`` (same arguments and weights) computed only on the kept tiles of its input; see
    :class:`SparseMono3DHeadMixin`. Its depth-class and weight branches run on the kept tiles too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_tile_layers()

    def forward(self, x: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], ...]:
        return multi_apply(self.forward_single, x, self.scales, self.strides, kept_tiles_of(x))

    def forward_single(self, x: torch.Tensor, scale: Scale, stride: int, kept_tiles: KeptTiles | None = None
                       ) -> tuple:
        if kept_tiles is None:
            return super().forward_single(x, scale, stride)
        cls_score, bbox_pred, dir_cls_pred, attr_pred, centerness, _, reg_feat = self._sparse_outputs(
            x, kept_tiles)
        bbox_pred = self.bbox_coder.decode(bbox_pred, scale, stride, self.training, cls_score)
        max_regress_range = stride * self.regress_ranges[0][1] / self.strides[0]
        bbox_pred = self.bbox_coder.decode_2d(bbox_pred, scale, stride, max_regress_range, self.training,
                                              self.pred_keypoints, self.pred_bbox2d)
        depth_cls_pred = weight = None
        if self.use_depth_classifier:
            depth_cls_pred = _branch(self.conv_depth_cls_prev, self.conv_depth_cls, reg_feat, kept_tiles, 0.)
        if self.weight_dim != -1:
            weight = torch.cat([_branch(self.conv_weight_prevs[i], self.conv_weights[i], reg_feat, kept_tiles, 0.)
                                for i in range(self.weight_dim)], dim=1)
        return cls_score, bbox_pred, dir_cls_pred, depth_cls_pred, weight, attr_pred, centerness
