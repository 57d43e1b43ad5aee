"""Timing helper shared by the bench scripts (they run as ``python bench/NAME.py``, so this imports as ``timing``)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls, after one warm-up call (imports, caches, JIT)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
