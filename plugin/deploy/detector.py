"""A whole Mask R-CNN as one tensor function with standard ONNX operators, and its parity checks against mmdet.

:class:`MaskRCNNDetections` reproduces mmdet 3.3.0's test path (``TwoStageDetector.predict`` up to the pasted
masks) on a batch of fixed size:

- backbone and neck through ``detector.extract_feat(image)`` and the RPN head through ``detector.rpn_head(x)``,
  so that a detector or head that overrides them (a sparse variant) exports as it runs;
- the RPN's decoding as ``RPNHead._predict_by_feat_single`` + ``_bbox_post_process``: per level the top
  ``nms_pre`` anchors by sigmoid score, delta decoding clipped to the resized image, ``min_bbox_size``, NMS per level
  with mmcv ``batched_nms``'s coordinate offsets, the best ``max_per_img`` proposals. An anchor whose logit is
  ``-inf`` was not computed (a sparse head skipped it): it never reaches NMS and never becomes a proposal;
- multi-level RoIAlign as ``SingleRoIExtractor`` (``map_roi_levels`` with ``finest_scale``) through
  ``torchvision.ops.roi_align``, which torch.onnx writes as ONNX ``RoiAlign``;
- the bbox head with class-specific decoding, ``score_thr`` and mmdet's ``multiclass_nms`` (mmcv's class offsets,
  the best ``max_per_img``), with one ``torchvision.ops.nms`` (ONNX ``NonMaxSuppression``) per class;
- the mask head on a fixed number of detections (zero-score rows pad it), the sigmoid mask of each detection's label.

Outputs (``runner.OUTPUT_NAMES``): boxes ``(B, D, 4)`` in the resized image's pixels, scores ``(B, D)`` (highest
first, 0 on padding rows), labels ``(B, D)``, masks ``(B, D, M, M)`` probabilities at the mask head's resolution and
num_detections ``(B,)``. Pasting the masks into the original image and rescaling the boxes, which depend on the
original image's size, is the runner's part (``plugin.deploy.runner``).

Variable counts (candidates above a threshold, NMS survivors, RoIs per level) are ``nonzero`` results inside the
graph; every tensor that leaves a stage has a fixed size with a validity mask, so the file has static shapes.
mmdet and mmcv are imported lazily: ``plugin.deploy`` imports without mmcv's compiled ops.
"""
import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .export import check_backbone
from .runner import (
    Detections,
    DetectorSettings,
    PreparedImage,
    detection_test_pipeline,
    model_fingerprint,
    paste_masks,
    resize_settings,
)

# Parity of exported detections with mmdet's predict (tests and tools/export.py): matched boxes' IoU, their scores'
# absolute difference and the pasted masks' IoU.
PARITY = {'box_iou': 0.99, 'score_atol': 1e-3, 'mask_iou': 0.98}
SUPPORTED = ('Mask R-CNN: a TwoStageDetector with an RPNHead (sigmoid objectness, AnchorGenerator, '
             'DeltaXYWHBBoxCoder), a StandardRoIHead with SingleRoIExtractors (RoIAlign, avg), a BBoxHead / '
             'ConvFCBBoxHead (softmax, DeltaXYWHBBoxCoder) and an FCNMaskHead, NMS of type nms')


def _refuse(model: nn.Module, part: str, value: object, need: str = '') -> None:
    shown = value if isinstance(value, str) else type(value).__name__
    raise TypeError(f'{type(model).__name__} has no exportable whole form: its {part} is {shown}'
                    f'{f" ({need})" if need else ""}; the whole-detector export reproduces {SUPPORTED}')


def _check_nms(model: nn.Module, part: str, cfg: Mapping[str, Any], max_key: str = 'max_per_img') -> None:
    nms_type = cfg.get('nms', {}).get('type', 'nms')
    if nms_type != 'nms':
        _refuse(model, f'{part}.nms type', repr(nms_type))
    if cfg.get(max_key, -1) <= 0:
        _refuse(model, f'{part}.{max_key}', repr(cfg.get(max_key)), 'a fixed number of outputs needs one > 0')


def check_mask_rcnn(model: nn.Module) -> None:
    """Raise ``TypeError`` (one line, naming the part) unless ``model`` is a Mask R-CNN that
    :class:`MaskRCNNDetections` reproduces, with one of this project's backbones."""
    from mmcv.ops import RoIAlign
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
    from mmdet.models.roi_heads import (
        BBoxHead,
        ConvFCBBoxHead,
        FCNMaskHead,
        Shared2FCBBoxHead,
        Shared4Conv1FCBBoxHead,
        SingleRoIExtractor,
        StandardRoIHead,
    )
    from mmdet.models.task_modules import AnchorGenerator, DeltaXYWHBBoxCoder

    if isinstance(model, SingleStageDetector):
        _refuse(model, 'bbox_head', model.bbox_head, 'a single-stage detector')
    if not isinstance(model, TwoStageDetector):
        _refuse(model, 'type', model, 'no TwoStageDetector')
    rpn_head = getattr(model, 'rpn_head', None)
    if not isinstance(rpn_head, RPNHead):
        _refuse(model, 'rpn_head', rpn_head, 'an RPNHead or a subclass is needed')
    if not rpn_head.use_sigmoid_cls:
        _refuse(model, 'rpn_head objectness', 'softmax', 'use_sigmoid_cls=True is needed')
    if not isinstance(rpn_head.prior_generator, AnchorGenerator):
        _refuse(model, 'rpn_head.prior_generator', rpn_head.prior_generator)
    roi_head = model.roi_head
    if type(roi_head) is not StandardRoIHead:
        _refuse(model, 'roi_head', roi_head)
    if roi_head.with_shared_head:
        _refuse(model, 'roi_head.shared_head', roi_head.shared_head)
    if not roi_head.with_mask:
        _refuse(model, 'roi_head mask head', 'missing', 'a Faster R-CNN')
    if type(roi_head.bbox_head) not in (BBoxHead, ConvFCBBoxHead, Shared2FCBBoxHead, Shared4Conv1FCBBoxHead):
        _refuse(model, 'roi_head.bbox_head', roi_head.bbox_head)
    bbox_head = roi_head.bbox_head
    if bbox_head.custom_cls_channels or not (bbox_head.with_cls and bbox_head.with_reg):
        _refuse(model, 'roi_head.bbox_head classifier', 'custom or missing', 'softmax scores and regression needed')
    if bbox_head.predict_box_type != 'hbox':
        _refuse(model, 'roi_head.bbox_head.predict_box_type', repr(bbox_head.predict_box_type))
    for part, coder in (('rpn_head.bbox_coder', rpn_head.bbox_coder), ('roi_head.bbox_head.bbox_coder',
                                                                       bbox_head.bbox_coder)):
        if type(coder) is not DeltaXYWHBBoxCoder:
            _refuse(model, part, coder)
    if type(roi_head.mask_head) is not FCNMaskHead:
        _refuse(model, 'roi_head.mask_head', roi_head.mask_head)
    if roi_head.mask_head.upsample_method == 'carafe':
        _refuse(model, 'roi_head.mask_head upsampling', 'carafe', 'an mmcv op with no standard ONNX form')
    for part in ('bbox_roi_extractor', 'mask_roi_extractor'):
        extractor = getattr(roi_head, part)
        if type(extractor) is not SingleRoIExtractor:
            _refuse(model, f'roi_head.{part}', extractor)
        for layer in extractor.roi_layers:
            if not isinstance(layer, RoIAlign) or layer.pool_mode != 'avg':
                _refuse(model, f'roi_head.{part} RoI layer', layer, 'RoIAlign with pool_mode avg is needed')
    _check_nms(model, 'test_cfg.rpn', rpn_head.test_cfg)
    _check_nms(model, 'test_cfg.rcnn', roi_head.test_cfg)
    if roi_head.test_cfg.get('mask_thr_binary', 0.5) < 0:
        _refuse(model, 'test_cfg.rcnn.mask_thr_binary', repr(roi_head.test_cfg.mask_thr_binary),
                'soft uint8 masks are not supported: set a threshold >= 0')
    check_backbone(model)


def decode_deltas(coder: nn.Module, priors: torch.Tensor, deltas: torch.Tensor,
                  image_shape: torch.Tensor) -> torch.Tensor:
    """mmdet's ``delta2bbox`` (the ``DeltaXYWHBBoxCoder``'s decoding, ``wh_ratio_clip`` 16/1000) of ``(N, 4)``
    priors and deltas, clipped to ``image_shape`` (h, w) given as a tensor (mmdet takes Python ints)."""
    deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(coder.means)
    dxy, dwh = deltas[:, :2], deltas[:, 2:]
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(16 / 1000))
    if coder.add_ctr_clamp:
        dxy_wh = dxy_wh.clamp(min=-coder.ctr_clamp, max=coder.ctr_clamp)
        dwh = dwh.clamp(max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if coder.clip_border:
        boxes = torch.minimum(boxes.clamp(min=0), image_shape.flip(0).repeat(2))
    return boxes


def batched_nms_kept(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, num_groups: int,
                     candidates: torch.Tensor, iou_threshold: float, class_agnostic: bool = False) -> torch.Tensor:
    """Which of ``boxes`` mmcv's ``batched_nms`` keeps among the ``candidates`` (a bool mask), as a bool mask.

    ``groups`` (in ``[0, num_groups)``) are the levels or classes that NMS keeps apart. As mmcv, the boxes of a
    group are shifted by group x (largest candidate coordinate + 1), and IoUs are those of the shifted boxes; one
    NMS (``torchvision.ops.nms``, bitwise equal to mmcv's on the CPU; ONNX ``NonMaxSuppression``) runs per group,
    as mmcv does above its ``split_thr`` of 10000 boxes and with the same result below it, where it runs one NMS
    over all shifted boxes (shifted groups never overlap). One NMS over the 80k boxes of 1000 RoIs x 80 classes
    takes seconds: NMS is quadratic in its boxes.
    """
    if class_agnostic:
        groups, num_groups = torch.zeros_like(groups), 1
    largest = torch.where(candidates[:, None], boxes, boxes.new_tensor(float('-inf'))).max()
    shifted = boxes + (groups.to(boxes) * (largest + 1))[:, None]
    kept = torch.zeros_like(candidates)
    for group in range(num_groups):
        index = (candidates & (groups == group)).nonzero().squeeze(1)
        kept[index[torchvision.ops.nms(shifted[index], scores[index], iou_threshold)]] = True
    return kept


def best_kept(kept: torch.Tensor, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the ``count`` best-scoring kept entries (all kept first, by descending score; mmdet sorts
    NMS survivors so and slices ``[:max_per_img]``) and whether each is a kept one (else padding)."""
    ranked = torch.where(kept, scores, scores.new_tensor(-1.0)).topk(min(count, scores.shape[0])).indices
    return ranked, kept[ranked]


def roi_levels(rois: torch.Tensor, finest_scale: float, num_levels: int) -> torch.Tensor:
    """mmdet's ``SingleRoIExtractor.map_roi_levels``: floor(log2(sqrt(area) / finest_scale + 1e-6)) in
    [0, num_levels). Counted as comparisons with powers of two, which give that floor without a logarithm, the
    same in PyTorch and ONNX Runtime (their log2 may round apart right at a level boundary)."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    ratio = scale / finest_scale + 1e-6
    levels = torch.zeros_like(ratio, dtype=torch.long)
    for level in range(1, num_levels):
        levels = levels + (ratio >= 2.0**level).long()
    return levels


def roi_features(extractor: nn.Module, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
    """mmdet's ``SingleRoIExtractor.forward`` on ``(R, 5)`` RoIs, with ``torchvision.ops.roi_align`` (bitwise equal
    to mmcv's RoIAlign on the CPU; ONNX ``RoiAlign`` in the exported graph)."""
    layers = extractor.roi_layers
    num_levels = len(layers)

    def align(level: int, level_rois: torch.Tensor) -> torch.Tensor:
        layer = layers[level]
        return torchvision.ops.roi_align(features[level], level_rois, layer.output_size, layer.spatial_scale,
                                         layer.sampling_ratio, layer.aligned)

    if num_levels == 1:
        return align(0, rois)
    levels = roi_levels(rois, extractor.finest_scale, num_levels)
    out = features[0].new_zeros(rois.shape[0], extractor.out_channels, *layers[0].output_size)
    for level in range(num_levels):
        index = (levels == level).nonzero().squeeze(1)
        out[index] = align(level, rois[index])
    return out


class MaskRCNNDetections(nn.Module):
    """An mmdet Mask R-CNN's test path as a tensor function of fixed-size outputs (see the module docstring).

    forward(image ``(B, 3, H, W)`` normalised and padded, image_shape ``(B, 2)`` float (h, w) of the resized image
    in it) -> boxes, scores, labels, masks, num_detections.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        check_mask_rcnn(detector)
        self.detector = detector

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone

    def forward(self, image: torch.Tensor, image_shape: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detector = self.detector
        features = detector.extract_feat(image)
        cls_scores, bbox_preds = detector.rpn_head(features)
        priors = detector.rpn_head.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores],
                                                               dtype=cls_scores[0].dtype, device=image.device)
        batch = image.shape[0]
        proposals = [self.proposals([score[i] for score in cls_scores], [pred[i] for pred in bbox_preds], priors,
                                    image_shape[i]) for i in range(batch)]
        rois = torch.cat([_with_batch_index(boxes, i) for i, (boxes, _) in enumerate(proposals)])
        roi_head = detector.roi_head
        cls_score, bbox_pred = roi_head.bbox_head(roi_features(roi_head.bbox_roi_extractor, features, rois))
        per_image = [self.detections(*pair, *proposals[i], image_shape[i])
                     for i, pair in enumerate(zip(cls_score.chunk(batch), bbox_pred.chunk(batch)))]
        boxes, scores, labels, valid = (torch.stack(parts) for parts in zip(*per_image))
        masks = self.mask_probabilities(features, boxes, labels) * valid[..., None, None]
        return boxes, scores, labels, masks, valid.sum(1)

    def proposals(self, cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                  priors: Sequence[torch.Tensor], image_shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's RPN proposals ``(P, 4)`` (zeros on padding) and their validity ``(P,)``."""
        head = self.detector.rpn_head
        cfg = head.test_cfg
        nms_pre = cfg.get('nms_pre', -1)
        scores, deltas, anchors, levels, computed = [], [], [], [], []
        for level, (cls_score, bbox_pred, level_priors) in enumerate(zip(cls_scores, bbox_preds, priors)):
            logits = cls_score.permute(1, 2, 0).reshape(-1)
            level_deltas = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
            level_scores = logits.sigmoid()
            if 0 < nms_pre < level_scores.shape[0]:
                level_scores, top = level_scores.topk(nms_pre)
                logits, level_deltas, level_priors = logits[top], level_deltas[top], level_priors[top]
            scores.append(level_scores)
            deltas.append(level_deltas)
            anchors.append(level_priors)
            levels.append(torch.full_like(logits, level, dtype=torch.long))
            computed.append(logits > float('-inf'))
        scores = torch.cat(scores)
        boxes = decode_deltas(head.bbox_coder, torch.cat(anchors), torch.cat(deltas), image_shape)
        candidates = torch.cat(computed)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            candidates = candidates & (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
        kept = batched_nms_kept(boxes, scores, torch.cat(levels), len(levels), candidates, cfg.nms.iou_threshold,
                                cfg.nms.get('class_agnostic', False))
        index, valid = best_kept(kept, scores, cfg.max_per_img)
        return torch.where(valid[:, None], boxes[index], 0.0), valid

    def detections(self, cls_score: torch.Tensor, bbox_pred: torch.Tensor, proposals: torch.Tensor,
                   proposal_valid: torch.Tensor, image_shape: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One image's boxes ``(D, 4)``, scores, labels and validity from the bbox head's outputs on its proposals
        (``BBoxHead._predict_by_feat_single`` without rescaling, then ``multiclass_nms``)."""
        head = self.detector.roi_head.bbox_head
        cfg = self.detector.roi_head.test_cfg
        num_rois, num_classes = cls_score.shape[0], head.num_classes
        scores = F.softmax(cls_score, dim=-1)[:, :-1].reshape(-1)
        if head.reg_class_agnostic:
            boxes = decode_deltas(head.bbox_coder, proposals, bbox_pred, image_shape)
            boxes = boxes[:, None].expand(num_rois, num_classes, 4).reshape(-1, 4)
        else:
            boxes = decode_deltas(head.bbox_coder, proposals.repeat_interleave(num_classes, dim=0),
                                  bbox_pred.reshape(-1, 4), image_shape)
        labels = torch.arange(num_classes, device=scores.device).repeat(num_rois)
        candidates = (scores > cfg.score_thr) & proposal_valid.repeat_interleave(num_classes)
        kept = batched_nms_kept(boxes, scores, labels, num_classes, candidates, cfg.nms.iou_threshold,
                                cfg.nms.get('class_agnostic', False))
        index, valid = best_kept(kept, scores, cfg.max_per_img)
        return (torch.where(valid[:, None], boxes[index], 0.0), torch.where(valid, scores[index], 0.0),
                torch.where(valid, labels[index], 0), valid)

    def mask_probabilities(self, features: Sequence[torch.Tensor], boxes: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
        """``(B, D, M, M)`` sigmoid mask of each detection's label (``FCNMaskHead`` on the detection boxes)."""
        roi_head = self.detector.roi_head
        batch, count = labels.shape
        rois = torch.cat([_with_batch_index(boxes[i], i) for i in range(batch)])
        mask_preds = roi_head.mask_head(roi_features(roi_head.mask_roi_extractor, features, rois))
        if roi_head.mask_head.class_agnostic:
            chosen = mask_preds[:, 0]
        else:
            chosen = mask_preds[torch.arange(batch * count, device=labels.device), labels.reshape(-1)]
        return chosen.sigmoid().view(batch, count, *chosen.shape[-2:])


def _with_batch_index(boxes: torch.Tensor, index: int) -> torch.Tensor:
    """``(N, 4)`` boxes -> ``(N, 5)`` RoIs of image ``index`` (mmdet's ``bbox2roi`` layout)."""
    return torch.cat([boxes.new_full((boxes.shape[0], 1), index), boxes], dim=1)


def dataset_metainfo(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The test dataset's class names and palette: its ``metainfo``, else its dataset type's defaults."""
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset['dataset']
    metainfo = dict(dataset.get('metainfo') or {})
    if 'classes' not in metainfo:
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        dataset_type = DATASETS.get(dataset.get('type', 'CocoDataset'))
        metainfo = {**getattr(dataset_type, 'METAINFO', {}), **metainfo}
    if 'classes' not in metainfo:
        raise ValueError('the config\'s test dataset names no classes (metainfo.classes)')
    return {'classes': [str(name) for name in metainfo['classes']],
            'palette': [list(colour) for colour in metainfo['palette']] if metainfo.get('palette') else None}


def with_exact_resize(cfg: Mapping[str, Any], size: Sequence[int]) -> Any:
    """A copy of a detection config whose test pipeline resizes to ``size`` (H, W) exactly, without keeping the
    aspect ratio: an exported file then runs images of that size as they are, as a packed batch of them runs
    in PyTorch (the benchmarks time both at one size)."""
    cfg = copy.deepcopy(cfg)
    pipelines = [cfg.get('test_pipeline') or [], cfg.test_dataloader.dataset.get('pipeline') or []]
    for transform in (transform for pipeline in pipelines for transform in pipeline):
        if str(transform.get('type', '')).split('.')[-1] == 'Resize':
            transform.update(scale=(size[1], size[0]), keep_ratio=False)
            transform.pop('scale_factor', None)
    return cfg


def detector_settings(cfg: Mapping[str, Any], model: nn.Module, input_size: Sequence[int], config_name: str,
                      overrides: Mapping[str, Any] | None = None) -> DetectorSettings:
    """The metadata of a whole-detector export of ``model`` built from ``cfg`` at ``input_size`` (H, W); one-line
    errors for what the runner would not reproduce (another preprocessor, an input size mmdet would not pad to)."""
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    preprocessor = model.data_preprocessor
    if type(preprocessor) is not DetDataPreprocessor:
        raise TypeError(f'the data preprocessor is {type(preprocessor).__name__}; the runner reproduces '
                        f'DetDataPreprocessor (normalisation, channel flip, zero padding)')
    divisor = preprocessor.pad_size_divisor
    if any(side % divisor for side in input_size):
        raise ValueError(f'the input size {input_size[0]}x{input_size[1]} must be a multiple of the data '
                         f'preprocessor\'s pad_size_divisor {divisor}, as every input mmdet gives the model')
    metainfo = dataset_metainfo(cfg)
    num_classes = model.roi_head.bbox_head.num_classes
    if len(metainfo['classes']) != num_classes:
        raise ValueError(f'the test dataset has {len(metainfo["classes"])} classes, the bbox head predicts '
                         f'{num_classes}: set the dataset\'s metainfo.classes')
    normalize = preprocessor._enable_normalize
    return DetectorSettings(
        resize=resize_settings(detection_test_pipeline(cfg)),
        mean=tuple(preprocessor.mean.flatten().tolist()) if normalize else None,
        std=tuple(preprocessor.std.flatten().tolist()) if normalize else None,
        flip_channels=bool(preprocessor._channel_conversion), pad_value=float(preprocessor.pad_value),
        classes=tuple(metainfo['classes']), palette=metainfo['palette'],
        mask_threshold=float(model.roi_head.test_cfg.get('mask_thr_binary', 0.5)), config=config_name,
        fingerprint=model_fingerprint(cfg['model']), overrides=dict(overrides or {}))


def random_check_inputs(batch: int, input_size: Sequence[int], seed: int) -> list[list[PreparedImage]]:
    """Two batches of random normalised images for an export check: the first fills the input (the export's
    input), the second a smaller resized image (2/3 x 3/4 of the sides) zero-padded, which exercises the clipping
    to the image; original size = resized size (scale 1)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = input_size
    batches = []
    for image_h, image_w in ((height, width), (max(1, height * 2 // 3), max(1, width * 3 // 4))):
        items = []
        for _ in range(batch):
            pixels = np.zeros((3, height, width), dtype=np.float32)
            pixels[:, :image_h, :image_w] = torch.randn(3, image_h, image_w, generator=generator).numpy()
            items.append(PreparedImage(pixels, (image_h, image_w), (image_h, image_w), (1.0, 1.0)))
        batches.append(items)
    return batches


def example_inputs(prepared: Sequence[PreparedImage]) -> tuple[torch.Tensor, torch.Tensor]:
    """The graph's inputs (image, image_shape) for prepared images."""
    images = torch.from_numpy(np.stack([item.input for item in prepared]))
    return images, torch.tensor([item.img_shape for item in prepared], dtype=torch.float32)


def mmdet_predict(model: nn.Module, prepared: Sequence[PreparedImage]) -> list:
    """mmdet's ``model.predict(..., rescale=True)`` on the runner's inputs (same padded tensor and image metas)."""
    from mmdet.structures import DetDataSample
    images, _ = example_inputs(prepared)
    padded = tuple(images.shape[2:])
    samples = [DetDataSample(metainfo={'img_shape': item.img_shape, 'ori_shape': item.ori_shape,
                                       'scale_factor': item.scale_factor, 'batch_input_shape': padded,
                                       'pad_shape': padded}) for item in prepared]
    with torch.no_grad():
        return model.predict(images, samples, rescale=True)


def _box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area[:, None] + other_area[None] - inter
    return inter / np.where(union > 0, union, 1)


@dataclasses.dataclass
class DetectionParity:
    """Detections of an exported model matched to mmdet's for one image.

    Pairs have the same label and a box IoU > 0.5 (greedy, highest reference score first); the worst pair's box
    IoU, score difference and mask IoU are kept. Two runtimes differ by float error, so where results tie they can
    differ without either being wrong: ``near_ties`` counts unmatched detections whose score lies within
    ``PARITY['score_atol']`` of an unmatched detection of the same label on the other side, or of the other side's
    cut-off (its lowest score when it holds the maximum number of detections, else ``score_thr``), and
    ``min_decisive_mask_iou`` is the worst mask IoU over the pixels whose exported mask probability lies more than
    ``MASK_MARGIN`` from the threshold (random weights give masks of probability ~0.5 everywhere, and scores alike).
    """
    reference_count: int
    count: int
    matched: int
    near_ties: int
    min_box_iou: float
    max_score_diff: float
    min_mask_iou: float
    min_decisive_mask_iou: float

    def _boxes_and_scores_hold(self) -> bool:
        return self.min_box_iou >= PARITY['box_iou'] and self.max_score_diff <= PARITY['score_atol']

    @property
    def holds(self) -> bool:
        """Same count, every detection matched, each pair within :data:`PARITY`."""
        return (self.count == self.reference_count == self.matched and self._boxes_and_scores_hold()
                and self.min_mask_iou >= PARITY['mask_iou'])

    @property
    def holds_up_to_ties(self) -> bool:
        """Every unmatched detection a near tie, and each pair within :data:`PARITY` (masks over decisive pixels)."""
        unmatched = self.count + self.reference_count - 2 * self.matched
        return (self.near_ties == unmatched and self._boxes_and_scores_hold()
                and self.min_decisive_mask_iou >= PARITY['mask_iou'])

    def row(self) -> dict[str, object]:
        return {'detections (PyTorch)': self.reference_count, 'detections (ONNX)': self.count,
                'matched': self.matched, 'near ties': self.near_ties, 'min box IoU': self.min_box_iou,
                'max score diff': self.max_score_diff, 'min mask IoU': self.min_mask_iou,
                f'min mask IoU (p beyond {MASK_MARGIN:g} of threshold)': self.min_decisive_mask_iou}


# Mask probabilities within this of the threshold are not decisive (see DetectionParity).
MASK_MARGIN = 0.01


def _mask_ious(reference: np.ndarray, detections: Detections, index: int) -> tuple[float, float]:
    """The mask IoU of a matched pair, and its IoU over the pixels whose exported probability is decisive."""
    mask = detections.masks[index]
    union = np.logical_or(reference, mask).sum()
    iou = float(np.logical_and(reference, mask).sum() / union) if union else 1.0
    if detections.mask_probabilities is None:
        return iou, iou
    box = detections.bboxes[index:index + 1]
    low, high = (paste_masks(detections.mask_probabilities[index:index + 1], box, *detections.ori_shape,
                             detections.mask_threshold + offset)[0] for offset in (-MASK_MARGIN, MASK_MARGIN))
    decisive = low == high
    union = np.logical_or(reference, high)[decisive].sum()
    return iou, float(np.logical_and(reference, high)[decisive].sum() / union) if union else 1.0


def compare_detections(detections: Detections, reference: Any, score_thr: float = 0.0,
                       max_detections: int | None = None) -> DetectionParity:
    """Match ``detections`` with mmdet's ``pred_instances`` (``reference``) of the same image (see
    :class:`DetectionParity`; ``score_thr`` and ``max_detections`` are the model's, for the cut-off of near ties)."""
    ref_boxes = reference.bboxes.cpu().numpy()
    ref_scores = reference.scores.cpu().numpy()
    ref_labels = reference.labels.cpu().numpy()
    ref_masks = reference.masks.cpu().numpy()
    ious = _box_iou(ref_boxes, detections.bboxes)
    pairs: dict[int, int] = {}
    box_ious, score_diffs, mask_ious, decisive_ious = [], [], [], []
    for ref in np.argsort(-ref_scores, kind='stable'):
        options = [(ious[ref, j], j) for j in range(len(detections.bboxes))
                   if j not in pairs.values() and detections.labels[j] == ref_labels[ref] and ious[ref, j] > 0.5]
        if not options:
            continue
        iou, match = max(options)
        pairs[int(ref)] = match
        box_ious.append(float(iou))
        score_diffs.append(abs(float(detections.scores[match]) - float(ref_scores[ref])))
        mask_iou, decisive_iou = _mask_ious(ref_masks[ref], detections, match)
        mask_ious.append(mask_iou)
        decisive_ious.append(decisive_iou)

    def cut_off(scores: np.ndarray) -> float:
        full = max_detections is not None and len(scores) >= max_detections
        return float(scores.min()) if full and len(scores) else score_thr

    unmatched_refs = [i for i in range(len(ref_scores)) if i not in pairs]
    unmatched = [j for j in range(len(detections.scores)) if j not in pairs.values()]
    atol = PARITY['score_atol']
    near_ties = sum(
        any(ref_labels[r] == detections.labels[j] and abs(ref_scores[r] - detections.scores[j]) <= atol
            for j in unmatched) or abs(ref_scores[r] - cut_off(detections.scores)) <= atol for r in unmatched_refs)
    near_ties += sum(
        any(ref_labels[r] == detections.labels[j] and abs(ref_scores[r] - detections.scores[j]) <= atol
            for r in unmatched_refs) or abs(detections.scores[j] - cut_off(ref_scores)) <= atol for j in unmatched)
    return DetectionParity(len(ref_boxes), len(detections.bboxes), len(pairs), int(near_ties),
                           min(box_ious, default=1.0), max(score_diffs, default=0.0), min(mask_ious, default=1.0),
                           min(decisive_ious, default=1.0))


def export_mask_rcnn(cfg: Mapping[str, Any], model: nn.Module, path: str | Path, input_size: Sequence[int],
                     config_name: str, overrides: Mapping[str, Any] | None = None, batch: int = 1,
                     seed: int = 0) -> tuple[Path, list[list[PreparedImage]]]:
    """Write ``model`` (built from ``cfg``) whole to the ONNX file ``path`` at ``input_size`` (H, W) and ``batch``,
    with the runner's metadata (``overrides``: what differs from ``cfg``, e.g. pruning ratios). Returns the path
    and the two batches of check inputs of :func:`random_check_inputs` (the first is the export's input)."""
    from .export import save, trace
    from .runner import METADATA_KEY, OUTPUT_NAMES
    module = MaskRCNNDetections(model)
    settings = detector_settings(cfg, model, input_size, config_name, overrides)
    checks = random_check_inputs(batch, input_size, seed)
    program = trace(module, example_inputs(checks[0]))
    return save(program, 'onnx', Path(path), OUTPUT_NAMES, {METADATA_KEY: settings.to_json()}), checks
