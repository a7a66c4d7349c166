"""Reading a benchmark's result in a way that survives --benchmark-disable, and CPU time."""

from __future__ import annotations

import os
from typing import Any


def median(benchmark: Any) -> float:
    """The median in seconds; NaN under --benchmark-disable, which keeps no stats
    (so `pytest benchmarks --benchmark-disable` works as a quick smoke run)."""
    return benchmark.stats.stats.median if benchmark.stats else float("nan")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a running process ``pid`` and of its waited-for children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(t) for t in fields[11:15]) / os.sysconf("SC_CLK_TCK")
