"""Deployment: exporting the backbones (and necks), whole segmentors and whole Mask R-CNN detectors to ONNX and
torch.export, checking the exported files, and running an exported detector from image to detections."""
from .detector import (
    PARITY,
    DetectionParity,
    MaskRCNNDetections,
    check_mask_rcnn,
    compare_detections,
    detector_settings,
    example_inputs,
    export_mask_rcnn,
    mmdet_predict,
    random_check_inputs,
    with_exact_resize,
)
from .export import (
    EXPORTABLE_BACKBONES,
    FORMATS,
    STATIC_SIZE_ONLY,
    SUFFIXES,
    ExportError,
    FeatureExtractor,
    SegmentorLogits,
    check_any_size,
    check_backbone,
    compare_with_pytorch,
    feature_extractor,
    load_runner,
    onnxruntime_session,
    relative_differences,
    save,
    segmentor_logits,
    trace,
)
from .runner import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAMES,
    Detections,
    DetectorSettings,
    OnnxDetector,
    PreparedImage,
    paste_masks,
    read_image,
)

__all__ = ['EXPORTABLE_BACKBONES', 'FORMATS', 'INPUT_NAMES', 'METADATA_KEY', 'OUTPUT_NAMES', 'PARITY',
           'STATIC_SIZE_ONLY', 'SUFFIXES', 'DetectionParity', 'Detections', 'DetectorSettings', 'ExportError',
           'FeatureExtractor', 'MaskRCNNDetections', 'OnnxDetector', 'PreparedImage', 'SegmentorLogits',
           'check_any_size', 'check_backbone', 'check_mask_rcnn', 'compare_detections', 'compare_with_pytorch',
           'detector_settings', 'example_inputs', 'export_mask_rcnn', 'feature_extractor', 'load_runner',
           'mmdet_predict', 'onnxruntime_session', 'paste_masks', 'random_check_inputs', 'read_image',
           'relative_differences', 'save', 'segmentor_logits', 'trace', 'with_exact_resize']
