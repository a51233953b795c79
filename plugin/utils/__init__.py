from .profiling import capture_cuda_graph, count_macs, median_latency_ms

__all__ = ['capture_cuda_graph', 'count_macs', 'median_latency_ms']
