"""Reading a benchmark's result in a way that survives --benchmark-disable."""

from __future__ import annotations

from typing import Any


def median(benchmark: Any) -> float:
    """The median in seconds; NaN under --benchmark-disable, which keeps no stats
    (so `pytest benchmarks --benchmark-disable` works as a quick smoke run)."""
    return benchmark.stats.stats.median if benchmark.stats else float("nan")
