"""Session fixtures shared by the benchmark suites, and the side-by-side summary."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from typing import Any

import containerd
import pytest

# (group, pysnap seconds per round, containerd seconds per round), in run order.
_SIDE_BY_SIDE: list[tuple[str, list[float], list[float]]] = []


@pytest.fixture(scope="session")
def containerd_driver() -> Iterator[containerd.Driver]:
    """containerd 1.6's overlay snapshotter in a Go process built for this session."""
    why = containerd.missing()
    if why:
        pytest.skip(f"containerd baseline unavailable: {why}")
    with tempfile.TemporaryDirectory(prefix="pysnap-ctd-build-") as d:
        driver = containerd.Driver(containerd.build(d))
        try:
            yield driver
        finally:
            driver.close()


def record(benchmark: Any, pysnap_rounds: list[float], containerd_rounds: list[float]) -> None:
    """Put both sides' medians, ranges and the speed-up into extra_info and the summary."""
    if not pysnap_rounds or not containerd_rounds:  # --benchmark-disable keeps no rounds
        return
    p, c = statistics.median(pysnap_rounds), statistics.median(containerd_rounds)
    benchmark.extra_info.update(
        containerd_median_s=c,
        containerd_range_s=[min(containerd_rounds), max(containerd_rounds)],
        pysnap_median_s=p,
        pysnap_range_s=[min(pysnap_rounds), max(pysnap_rounds)],
        speedup_vs_containerd=c / p,
    )
    _SIDE_BY_SIDE.append((benchmark.group, pysnap_rounds, containerd_rounds))


def _fmt(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SIDE_BY_SIDE:
        return
    tr = terminalreporter
    tr.section("pysnap vs containerd 1.6 overlay, alternated round by round")
    tr.write_line("group: pysnap median [min-max] | containerd median [min-max] | speed-up")
    for group, p, c in _SIDE_BY_SIDE:
        pm, cm = statistics.median(p), statistics.median(c)
        tr.write_line(
            f"{group}: {_fmt(pm)} [{_fmt(min(p))}-{_fmt(max(p))}] | "
            f"{_fmt(cm)} [{_fmt(min(c))}-{_fmt(max(c))}] | {cm / pm:.2f}x "
            f"({len(p)} rounds)"
        )
