"""A stand-in for ``plugin.utils.alternating_latency_ms`` in the benchmark tests: it records how many callables each
alternating loop got and times the i-th callable of a loop at 10 * (i + 1) ms, so the ratios are known in advance."""
from collections.abc import Callable, Sequence


class RecordedLoops:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, runs: Sequence[Callable[[], object]], device, warmup: int, repeats: int) -> list[float]:
        self.sizes.append(len(runs))
        return [10.0 * (index + 1) for index in range(len(runs))]
