from .profiling import count_macs, median_latency_ms

__all__ = ['count_macs', 'median_latency_ms']
