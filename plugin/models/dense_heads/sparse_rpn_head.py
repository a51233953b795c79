"""SparseRPNHead: mmdet's RPN head computed only on the tiles that a sparse backbone and neck computed."""
import torch
import torch.nn as nn
from mmdet.models.dense_heads import RPNHead
from mmdet.models.utils import multi_apply
from mmengine.registry import MODELS
from mmengine.structures import InstanceData

from ..utils.records import KeptTiles
from ..utils.tile_conv import check_kept_tiles, check_tile_layer, kept_tiles_of, run_on_kept
from .skipped_positions import (
    SKIPPED_LOGIT,
    computed_positions,
    computed_positions_in_scope,
    finite_logits,
    only_computed_positions,
)


@MODELS.register_module()
class SparseRPNHead(RPNHead):
    """mmdet's ``RPNHead`` (same arguments and weights) whose convolutions run only on the kept tiles of its input.

    Its input is a :class:`~plugin.models.utils.tile_conv.SparseFeatures` (SparseFPN's output); a level
    without kept tiles, or a plain tuple, runs mmdet's forward. On a level with kept tiles the RPN
    convolution and the 1x1 classification and regression convolutions run on the kept tiles only;
    the anchors of the skipped tiles get the classification logit ``-inf`` (regression 0). They are
    never proposed (``predict``) and are invalid in ``loss``, as mmdet treats anchors outside the image.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for index, layer in enumerate(self._trunk()[:-1]):
            check_tile_layer(layer, f'SparseRPNHead.rpn_conv[{index}]')
        check_tile_layer(self.rpn_cls, 'SparseRPNHead.rpn_cls')
        check_tile_layer(self.rpn_reg, 'SparseRPNHead.rpn_reg')

    def _trunk(self) -> list[nn.Module]:
        """The layers before the classification and regression convolutions: mmdet's ``relu(rpn_conv(x))``."""
        convs = list(self.rpn_conv) if isinstance(self.rpn_conv, nn.Sequential) else [self.rpn_conv]
        return convs + [nn.ReLU()]

    def forward(self, x: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return multi_apply(self.forward_single, x, kept_tiles_of(x))

    def forward_single(self, x: torch.Tensor, kept_tiles: KeptTiles | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification logits (``-inf`` on skipped tiles) and box deltas (0 there) of one level."""
        if kept_tiles is None:
            return super().forward_single(x)
        check_kept_tiles(kept_tiles, x, 'SparseRPNHead')
        feature = run_on_kept(self._trunk(), x, kept_tiles)
        cls_score = run_on_kept([self.rpn_cls], feature, kept_tiles).to_map(SKIPPED_LOGIT)
        bbox_pred = run_on_kept([self.rpn_reg], feature, kept_tiles).to_map(0.)
        # NCHW memory, as mmdet's outputs (a batch's or an export's tiles come back as views).
        return cls_score.contiguous(), bbox_pred.contiguous()

    def loss_by_feat(self, cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], *args, **kwargs) -> dict:
        """mmdet's RPN losses with the anchors of skipped tiles invalid (see :meth:`get_anchors`)."""
        computed = [computed_positions(score, self.cls_out_channels) for score in cls_scores]
        with only_computed_positions(computed):
            return super().loss_by_feat(finite_logits(cls_scores), bbox_preds, *args, **kwargs)

    def get_anchors(self, featmap_sizes: list[tuple[int, int]], batch_img_metas: list[dict],
                    device: torch.device | str = 'cuda') -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """mmdet's anchors and valid flags; inside ``loss_by_feat`` the anchors of skipped tiles are invalid too."""
        anchor_list, valid_flag_list = super().get_anchors(featmap_sizes, batch_img_metas, device=device)
        computed = computed_positions_in_scope()
        if computed is not None:
            valid_flag_list = [[flags & computed[level][image] for level, flags in enumerate(image_flags)]
                               for image, image_flags in enumerate(valid_flag_list)]
        return anchor_list, valid_flag_list

    def _predict_by_feat_single(self, cls_score_list: list[torch.Tensor], bbox_pred_list: list[torch.Tensor],
                                score_factor_list: list[torch.Tensor], mlvl_priors: list[torch.Tensor],
                                img_meta: dict, cfg, rescale: bool = False, with_nms: bool = True
                                ) -> InstanceData:
        """mmdet's proposals of one image from the computed anchors only.

        Each level's computed anchors enter mmdet's code as a ``(channels, 1, n)`` map, which it flattens in
        their (row, column, anchor) order, so its top-k, decoding and NMS never see a skipped anchor.
        """
        reg_dim = self.bbox_coder.encode_size
        kept_scores, kept_deltas, kept_priors = [], [], []
        for cls_score, bbox_pred, priors in zip(cls_score_list, bbox_pred_list, mlvl_priors):
            scores = cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels)
            deltas = bbox_pred.permute(1, 2, 0).reshape(-1, reg_dim)
            computed = ~torch.isneginf(scores).all(-1)
            kept_scores.append(scores[computed].t().unsqueeze(1))
            kept_deltas.append(deltas[computed].t().unsqueeze(1))
            kept_priors.append(priors[computed])
        return super()._predict_by_feat_single(kept_scores, kept_deltas, score_factor_list, kept_priors, img_meta,
                                               cfg, rescale=rescale, with_nms=with_nms)
