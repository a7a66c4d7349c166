"""Usage walk benchmarks (issue 3): snapcore.du side by side with GNU du and scandir.

Run: pytest benchmarks/bench_du.py --benchmark-only -p no:cacheprovider

Groups, one per tree, each with: snapcore.du with threads=1, snapcore.du with
the adaptive default, GNU `du -s` as a process (what a user would run), and the
os.scandir twin in pysnap._reference. Trees are built once and cached under
PYSNAP_BENCH_TREES (default /var/tmp/pysnap-bench-trees), so later runs walk a
warm tree at once:

* gen1m: 1,000,000 files in 1,000 directories of 1,000 (50 groups of 20, so
  some nesting), plus 10,000 hard links to them in links/;
* usr: `cp -a /usr`, a real system tree;
* small: a few thousand entries, the size of a small layer.

Group "du usr cold" (issue 14): the same walk of usr on a cold cache. Before
every round caches are dropped (`echo 3 > /proc/sys/vm/drop_caches`: root only,
skipped otherwise; it slows every process on the machine for a moment), GNU
`du -s` walks cold, caches are dropped again, and the implementation walks
cold: du and pysnap alternate on the same tree, and ratio_vs_du_s compares
their medians over the same rounds.

extra_info gives the entries walked (distinct inodes), ns per entry, the
ratio of the median to `du -s` on the same tree, and whether the result
equals the scandir twin's. test_peak_memory compares ru_maxrss of a fresh
process that only walks gen1m/files (1,000,000 files, no hard links) with one
that only imports (VmHWM, see _MAXRSS). A summary table goes to <trees>/du-summary.txt.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from timing import median

from pysnap import _reference
from snapcore import du

CACHE = Path(os.environ.get("PYSNAP_BENCH_TREES", "/var/tmp/pysnap-bench-trees"))
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

IMPLS: dict[str, Callable[[str], Any]] = {
    "du -s": lambda p: subprocess.run(["du", "-s", p], stdout=subprocess.DEVNULL, check=True),
    "snapcore threads=1": lambda p: du.disk_usage(p, threads=1),
    "snapcore default": lambda p: du.disk_usage(p),
    "scandir twin": lambda p: _reference.disk_usage(p),
}
ROUNDS = {"small": 60, "usr": 7, "gen1m": 3}
SCANDIR_ROUNDS = {"small": 20, "usr": 3, "gen1m": 1}

MEDIANS: dict[tuple[str, str], float] = {}
EXPECTED: dict[str, tuple[int, int]] = {}


# ---- trees, built once and cached ------------------------------------------------


def _build_gen1m(top: Path) -> None:
    files = top / "files"
    for g in range(50):
        for d in range(20):
            dpath = files / f"g{g:02d}" / f"d{d:02d}"
            dpath.mkdir(parents=True)
            fd = os.open(dpath, _DIR)
            try:
                for f in range(1000):
                    # a few sizes, so blocks vary: most are empty, as in a layer
                    if f % 50 == 0:
                        wfd = os.open(f"f{f:04d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                        os.write(wfd, b"x" * (100 * (f + 1)))
                        os.close(wfd)
                    else:
                        os.mknod(f"f{f:04d}", 0o644 | 0o100000, dir_fd=fd)
            finally:
                os.close(fd)
    links = top / "links"
    for d in range(10):
        (links / f"l{d}").mkdir(parents=True)
        for f in range(1000):
            os.link(files / f"g{d:02d}" / "d00" / f"f{f:04d}", links / f"l{d}" / f"h{f:04d}")


def _build_usr(top: Path) -> None:
    subprocess.run(["cp", "-a", "/usr", str(top)], check=True)


def _build_small(top: Path) -> None:
    top.mkdir()
    for d in range(40):
        sub = top / f"pkg{d:02d}" / "lib"
        sub.mkdir(parents=True)
        (top / f"pkg{d:02d}" / "doc").mkdir()
        for f in range(150):
            (sub / f"mod{f:03d}.py").write_bytes(b"#" * (37 * f + 1))
        (top / f"pkg{d:02d}" / "doc" / "README").write_text("readme\n")
        (top / f"pkg{d:02d}" / "current").symlink_to("lib")


BUILDERS = {"gen1m": _build_gen1m, "usr": _build_usr, "small": _build_small}


def tree_path(name: str) -> Path:
    """The cached tree `name`, built now if a complete one is not there."""
    top = CACHE / name
    done = CACHE / f"{name}.complete"
    if not done.exists():
        if top.exists() or top.is_symlink():
            from pysnap.fsutil import remove_tree

            remove_tree(top)
        CACHE.mkdir(parents=True, exist_ok=True)
        BUILDERS[name](top)
        done.write_text("ok\n")
    return top


@pytest.fixture(scope="session")
def trees() -> dict[str, str]:
    out = {name: str(tree_path(name)) for name in BUILDERS}
    for name, p in out.items():
        # warm the cache, and the oracle every implementation is checked against
        subprocess.run(["du", "-s", p], stdout=subprocess.DEVNULL, check=True)
        EXPECTED[name] = _reference.disk_usage(p)
    return out


# ---- the walk benchmarks ---------------------------------------------------------------

CASES = [(tree, impl) for tree in ("small", "usr", "gen1m") for impl in IMPLS]


@pytest.mark.parametrize(("tree", "impl"), CASES, ids=[f"{t}-{i}" for t, i in CASES])
def test_du(benchmark: Any, trees: dict[str, str], tree: str, impl: str) -> None:
    path = trees[tree]
    fn = IMPLS[impl]
    benchmark.group = f"du {tree}"
    entries = EXPECTED[tree][1]
    if impl == "du -s":
        out = subprocess.run(["du", "-s", "--block-size=512", path], capture_output=True)
        correct = int(out.stdout.split()[0]) * 512 == EXPECTED[tree][0]
    else:
        correct = fn(path) == EXPECTED[tree]
    rounds = SCANDIR_ROUNDS[tree] if impl == "scandir twin" else ROUNDS[tree]
    benchmark.pedantic(fn, args=(path,), rounds=rounds, iterations=1, warmup_rounds=1)
    med = median(benchmark)
    MEDIANS[(tree, impl)] = med
    base = MEDIANS.get((tree, "du -s"))
    benchmark.extra_info.update(
        entries=entries,
        ns_per_entry=round(med * 1e9 / entries, 1),
        ratio_vs_du_s=round(med / base, 3) if base else None,
        correct=correct,
    )
    assert correct


# ---- the walk on a cold cache --------------------------------------------------------

COLD_ROUNDS = 5
COLD: dict[str, tuple[float, float]] = {}  # impl: (its median, du -s's median, same rounds)


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.mark.parametrize("impl", ["snapcore threads=1", "snapcore default"])
def test_du_cold(benchmark: Any, trees: dict[str, str], impl: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping the caches needs root")
    path = trees["usr"]
    du_s: list[float] = []

    def cold_du_first() -> None:
        _drop_caches()
        t0 = time.perf_counter()
        IMPLS["du -s"](path)
        du_s.append(time.perf_counter() - t0)
        _drop_caches()

    benchmark.group = "du usr cold"
    result: list[tuple[int, int]] = []
    fn = IMPLS[impl]
    benchmark.pedantic(
        lambda: result.append(fn(path)), setup=cold_du_first, rounds=COLD_ROUNDS, iterations=1
    )
    med, base = median(benchmark), statistics.median(du_s)
    COLD[impl] = (med, base)
    benchmark.extra_info.update(
        du_s_cold_median=round(base, 3),
        ratio_vs_du_s=round(med / base, 3),
        correct=all(r == EXPECTED["usr"] for r in result),
    )
    assert all(r == EXPECTED["usr"] for r in result)


# ---- peak memory -------------------------------------------------------------------------

# Peak RSS of the process itself. Not ru_maxrss: Linux carries the parent's
# high-water mark into a forked child and through execve (exec records the old
# mm's hiwater_rss), so a child of this big pytest process would report
# pytest's peak. VmHWM is the peak of the new process image only.
_MAXRSS = (
    "print([int(line.split()[1]) for line in open('/proc/self/status')"
    " if line.startswith('VmHWM:')][0])"
)


def _rss_of(code: str) -> int:
    """Peak RSS (KiB) of a fresh interpreter running code."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_peak_memory(benchmark: Any, trees: dict[str, str]) -> None:
    """Peak RSS above a bare interpreter of a walk of 1,000,000 files without hard links."""
    files = os.path.join(trees["gen1m"], "files")
    base = _rss_of("from snapcore import du; from pysnap import _reference; " + _MAXRSS)
    walks = {
        "threads=1": f"du.disk_usage({files!r}, threads=1)",
        "default": f"du.disk_usage({files!r})",
        "scandir": f"_reference.disk_usage({files!r})",
    }
    extra: dict[str, float] = {"interpreter_MiB": round(base / 1024, 1)}
    for name, call in walks.items():
        code = f"from snapcore import du; from pysnap import _reference; {call}; {_MAXRSS}"
        extra[f"{name}_above_MiB"] = round((_rss_of(code) - base) / 1024, 1)
    benchmark.group = "du peak memory (1M files)"
    benchmark.extra_info.update(extra)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    MEMORY.update(extra)
    print("\npeak memory:", extra)
    assert extra["threads=1_above_MiB"] < 20
    assert extra["default_above_MiB"] < 20


MEMORY: dict[str, float] = {}


def test_zz_summary(benchmark: Any, trees: dict[str, str]) -> None:
    """Write the side-by-side table (medians, ns/entry, ratio to du -s) to the cache dir.

    Runs last (file order); a benchmark itself only so that --benchmark-only keeps it.
    """
    benchmark.group = "du summary"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if not MEDIANS:
        pytest.skip("no benchmark ran")
    lines = [f"{'tree':8} {'impl':20} {'median s':>10} {'ns/entry':>9} {'x du -s':>8}"]
    for tree, impl in CASES:
        if (tree, impl) not in MEDIANS:
            continue
        m = MEDIANS[(tree, impl)]
        base = MEDIANS.get((tree, "du -s"))
        ratio = f"{m / base:8.3f}" if base else " " * 8
        ns = m * 1e9 / EXPECTED[tree][1]
        lines.append(f"{tree:8} {impl:20} {m:10.4f} {ns:9.1f} {ratio}")
    for impl, (m, base) in COLD.items():
        lines.append(f"{'usr cold':8} {impl:20} {m:10.4f} {'':9} {m / base:8.3f}")
        lines.append(f"{'usr cold':8} {'du -s (same rounds)':20} {base:10.4f}")
    for k, v in MEMORY.items():
        lines.append(f"memory {k}: {v}")
    text = "\n".join(lines) + "\n"
    (CACHE / "du-summary.txt").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    # Build the cached trees ahead of a run: python benchmarks/bench_du.py
    for name in sys.argv[1:] or list(BUILDERS):
        print(name, tree_path(name), resource.getrusage(resource.RUSAGE_SELF).ru_utime)
    shutil.disk_usage(CACHE)
