from .profiling import (
    alternating_latency_ms,
    capture_cuda_graph,
    count_macs,
    count_macs_per_module,
    device_name,
    median_latency_ms,
)
from .tables import markdown_table

__all__ = ['alternating_latency_ms', 'capture_cuda_graph', 'count_macs', 'count_macs_per_module', 'device_name',
           'markdown_table', 'median_latency_ms']
