"""Timing and memory measurement shared by the benchmark files.

CUDA: median time through triton.testing.do_bench (CUDA events, warm-up first, caches flushed),
peak memory from the caching allocator's high-water mark. CPU: median wall time of a few runs.
"""

from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, grad_to_none=None, cpu_reps: int = 5) -> float:
    """Median milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(
                fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"
            )
        )
    fn()  # warm-up
    times = []
    for _ in range(cpu_reps):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn, device: torch.device) -> float | None:
    """Peak device memory allocated by ``fn()`` beyond what was allocated before it (MiB).

    None on the CPU (see cpu_memory.py for a subprocess-based CPU measurement).
    """
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return peak / 2**20


def run_pytest_benchmark(benchmark, fn, device: torch.device, rounds: int = 3):
    """Hand ``fn`` to pytest-benchmark (its own table and JSON), synchronised on CUDA."""

    def timed():
        out = fn()
        synchronize(device)
        return out

    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
