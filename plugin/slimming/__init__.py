"""Latency-driven slimming of EfficientFormer: lookup tables, prediction, the greedy search."""
from .greedy import SlimmingStep, SubNetwork, check_importance, slim, write_config
from .latency import (
                      build_latency_lut,
                      candidate_entries,
                      measure_config_latency,
                      predict_config_latency,
                      predict_latency,
                      subnet_entries,
)

__all__ = [
    'SlimmingStep', 'SubNetwork', 'build_latency_lut', 'candidate_entries', 'check_importance',
    'measure_config_latency', 'predict_config_latency', 'predict_latency', 'slim', 'subnet_entries',
    'write_config'
]
