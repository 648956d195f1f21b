"""Shared by the benchmarks: the least disturbed of several runs (the 2 cores are often shared)."""

from __future__ import annotations

import time
from typing import Callable


def best_of(repeats: int, run: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``run``; ``before`` runs untimed before each."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)
