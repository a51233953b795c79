"""MACs counting, latency measurement and device names shared by the benchmarks, the search and the slimming tools."""
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _fused_cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter misses the fused CPU attention kernel that SDPA picks for
# some masks; it costs what any other SDPA kernel costs.
_UNCOUNTED_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _fused_cpu_attention_flops}


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of one call of ``fn`` (a module or any callable).

    torch's flop counter sees every matrix product that really runs, attention
    (``scaled_dot_product_attention``) included, which mmengine's counter skips;
    a pruned backbone is therefore charged only for the windows it keeps.
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_ATTENTION) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


def count_macs_per_module(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, int]:
    """Multiply-accumulates of one call of ``fn`` per module it ran, as torch's counter names them: ``'Global'``
    for the whole call, ``'<RootClass>.<child>'`` (e.g. ``'MaskRCNN.backbone'``) for each module called as a
    module (through ``__call__``), including everything below it."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_ATTENTION) as counter:
        fn(*args, **kwargs)
    return {name: sum(flops.values()) // 2 for name, flops in counter.get_flop_counts().items()}


def device_name(device: torch.device | str) -> str:
    """A readable name of ``device``: the GPU's, or the CPU's with the threads torch uses."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def _sdpa_macs_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """mmengine-analyzer handle of ``aten::scaled_dot_product_attention``: the two matrix products."""
    from mmengine.analysis.jit_handles import get_shape
    query, key, value = (get_shape(v) for v in inputs[:3])
    batch = math.prod(query[:-2])
    return batch * query[-2] * key[-2] * (query[-1] + value[-1])


def register_attention_with_mmengine_counter() -> None:
    """Make mmengine's FLOP counter (mmdet's and mmseg's ``get_flops.py``) count fused attention.

    It lists ``aten::scaled_dot_product_attention`` as unsupported and skips it, which for a
    transformer backbone leaves out the attention products (5.6% of the demo's SparseViT-Swin at
    160x160); the handle counts them, one MAC per multiply-add as mmengine counts the other operators.
    """
    from mmengine.analysis import complexity_analysis
    from mmengine.analysis.jit_handles import generic_activation_jit
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.setdefault('aten::scaled_dot_product_attention', _sdpa_macs_jit)
    # Its activation counter lists attention as unsupported too: its output, as for the other matrix products.
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS.setdefault('aten::scaled_dot_product_attention',
                                                             generic_activation_jit())


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_latency_ms(fn: Callable[[], Any],
                      device: torch.device | str = 'cpu',
                      warmup: int = 3,
                      repeats: int = 10) -> float:
    """Median wall-clock latency of ``fn()`` in milliseconds, after ``warmup`` calls."""
    device = torch.device(device)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def alternating_latency_ms(fns: Sequence[Callable[[], Any]], device: torch.device | str = 'cpu', warmup: int = 3,
                           repeats: int = 10) -> list[float]:
    """Median latency of each of ``fns``, timed in alternation (each round starting one callable later) so that
    changes of the machine's load hit all of them alike."""
    for fn in fns:
        median_latency_ms(fn, device, warmup, 1)  # warm-up only
    times: list[list[float]] = [[] for _ in fns]
    for round_index in range(repeats):
        for i in range(len(fns)):
            k = (round_index + i) % len(fns)
            times[k].append(median_latency_ms(fns[k], device, 0, 1))
    return [statistics.median(fn_times) for fn_times in times]


def capture_cuda_graph(forward: Callable[[], Any], warmup: int = 3) -> tuple['torch.cuda.CUDAGraph', Any]:
    """``forward()`` captured as a CUDA graph, after ``warmup`` calls on a side stream (as capture needs).

    Returns the graph and the output tensors of the captured call: ``graph.replay()``
    reruns the work on the same input buffers and rewrites those outputs in place.
    """
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        for _ in range(warmup):
            forward()
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = forward()
    return graph, output
