"""Deployment: exporting the backbones (and necks) to ONNX and torch.export, and checking the exported files."""
from .export import (
    EXPORTABLE_BACKBONES,
    FORMATS,
    STATIC_SIZE_ONLY,
    SUFFIXES,
    ExportError,
    FeatureExtractor,
    SegmentorLogits,
    check_any_size,
    compare_with_pytorch,
    feature_extractor,
    load_runner,
    onnxruntime_session,
    relative_differences,
    save,
    segmentor_logits,
    trace,
)

__all__ = ['EXPORTABLE_BACKBONES', 'FORMATS', 'STATIC_SIZE_ONLY', 'SUFFIXES', 'ExportError', 'FeatureExtractor',
           'SegmentorLogits', 'check_any_size', 'compare_with_pytorch', 'feature_extractor', 'load_runner',
           'onnxruntime_session', 'relative_differences', 'save', 'segmentor_logits', 'trace']
