"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, run in interleaved rounds so machine drift hits all alike."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, warmup=0, rotate=False).items()}


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                      rotate: bool = True) -> dict[str, list[float]]:
    """Seconds of every call of each fn: ``warmup`` untimed calls each, then ``repeats`` rounds.

    With ``rotate`` each round starts with the next fn, so no fn always runs first (after
    a fresh cache) or last.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        shift = r % len(order) if rotate else 0
        for name in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ratio_stats(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of the per-round ratios of two interleaved timings."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def setup(default_repeats: int = 40) -> int:
    """Parse ``--repeats``, run torch on one thread, seed 0; the repeats."""
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=default_repeats)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return repeats
