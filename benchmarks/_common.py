"""Shared by the benchmarks: interleaved repeated timing, median and spread, and the float32
GEMM rate of this machine measured in the same run (the roofline every exact method is
bound by)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def gemm_gflops(size: int = 2048, repeat: int = 10) -> float:
    """float32 ``size x size`` matrix-multiply throughput (GFLOP/s), best of ``repeat``."""
    a = torch.randn(size, size)
    a @ a
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def interleaved(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, ``repeat`` rounds, one call of each per round (so
    a slow spell of the machine hits every contender alike)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread(times: list[float], unit: str = "s", scale: float = 1.0) -> str:
    """``median [min-max] unit`` of a list of timings."""
    med = statistics.median(times) * scale
    return f"{med:7.3f} {unit} [{min(times) * scale:.3f}-{max(times) * scale:.3f}]"


def median(times: list[float]) -> float:
    return statistics.median(times)
