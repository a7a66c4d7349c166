"""Layer apply and diff benchmarks (issue 12), side by side with GNU tar, containerd, tarfile.

Run: pytest benchmarks/bench_layers.py --benchmark-only -p no:cacheprovider

Layers are built once and cached under PYSNAP_BENCH_LAYERS (default
/var/tmp/pysnap-bench-layers):

* usr-share: ``tar --numeric-owner -c /usr/share`` (about 85,000 entries,
  1.1 GB), also gzip-compressed (ISA-L level 2) and zstd-compressed (level 3);
* small100k: 100,000 files of 100 bytes in 100 directories;
* busybox: /usr/bin/busybox and a symlink per applet, as a busybox image layer.

Each is applied into a fresh empty directory on tmpfs (/dev/shm) and on a new
ext4 on the root disk (conftest.py says why not the root file system; there,
the gzip layer's slow baselines are left out), by pysnap
(``pysnap.archive.apply.apply_stream``, the whole pipeline: read, hash,
decompress, apply), GNU ``tar -x`` (``-I igzip``
when igzip is installed, ``-z``, ``--zstd``), containerd 1.6's overlay
applier (``benchmarks/containerd_overlay``, built from Debian's containerd
sources; skipped without them), Python's tarfile (usr-share on tmpfs,
uncompressed only: it takes about 20 s), and decompression alone (pysnap's
reader, no hashing, no apply). The diff group writes the usr-share tree and a
24-change snapshot over it, against ``tar -c`` of the same directory, and once
more with ``tar -c`` and pysnap alternated round by round (at least 5 rounds).
Each round writes a new file: the previous round's output is removed before
the clock starts (replacing a 1.1 GB file on tmpfs frees its pages in the
timed call: in tar's truncation, in pysnap's rename at the end).
``test_syscalls_per_entry`` counts syscalls with ``strace -f -c`` and
``test_peak_memory`` the RSS growth of a fresh process applying the gzip
layer. Big layers take one round each (PYSNAP_BENCH_ROUNDS for more); every
figure is appended to <cache>/layers-results.log as it is measured, and a
summary table goes to <cache>/layers-summary.txt.

The machine these figures come from is shared: wall times move with the
load; ratios measured in one run are what to compare.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXT4_MOUNT
from timing import cpu_of, median

import pysnap
from pysnap.archive import compression
from pysnap.archive.apply import apply_stream
from pysnap.archive.diff import diff_upper

CACHE = Path(os.environ.get("PYSNAP_BENCH_LAYERS", "/var/tmp/pysnap-bench-layers"))
FILESYSTEMS = {"tmpfs": Path("/dev/shm"), "ext4": EXT4_MOUNT}
IGZIP = shutil.which("igzip")
MEDIANS: dict[tuple[str, str], float] = {}
ENTRIES: dict[str, int] = {}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root")


def _record(group: str, impl: str, value: float, cpu: float | None = None) -> None:
    """Keep a figure for the summary, and log it at once (a long run may be cut short)."""
    MEDIANS[(group, impl)] = value
    with open(CACHE / "layers-results.log", "a") as f:
        f.write(f"{group}\t{impl}\t{value:.4f}" + (f"\tcpu {cpu:.3f}" if cpu else "") + "\n")


@contextlib.contextmanager
def _cpu_time() -> Iterator[list[float]]:
    """User+system seconds of this process (all threads) and its children meanwhile.

    On a shared machine wall times follow the load; CPU time is the steadier figure.
    """
    out = [0.0]

    def now() -> float:
        s, c = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    start = now()
    try:
        yield out
    finally:
        out[0] = now() - start


# ---- layers, built once and cached -------------------------------------------------


def _build_small(top: Path) -> None:
    for d in range(100):
        sub = top / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(1000):
            (sub / f"f{f:04}").write_bytes(b"x" * 100)


def _build_busybox(top: Path) -> None:
    (top / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/busybox", top / "bin/busybox")
    applets = subprocess.run(
        ["/usr/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", top / "bin" / a)


def _tar_of(top: Path, out: Path, *members: str) -> None:
    tmp = out.with_suffix(".part")
    subprocess.run(
        ["tar", "--numeric-owner", "-cf", str(tmp), "-C", str(top), *members], check=True
    )
    os.rename(tmp, out)


def _compress(src: Path, dst: Path, kind: str) -> None:
    if dst.exists():
        return
    step = compression.compressor(kind, None)
    assert step is not None
    tmp = dst.with_suffix(".part")
    with open(src, "rb") as f, open(tmp, "wb") as out:
        while piece := f.read(compression.CHUNK):
            out.write(step(piece))
        out.write(step(b""))
    os.rename(tmp, dst)


@pytest.fixture(scope="session")
def layers() -> dict[str, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = {name: CACHE / f"{name}.tar" for name in ("usr-share", "small100k", "busybox")}
    if not paths["usr-share"].exists():
        _tar_of(Path("/"), paths["usr-share"], "usr/share")
    for name, build in (("small100k", _build_small), ("busybox", _build_busybox)):
        if not paths[name].exists():
            tree = CACHE / f"{name}-tree"
            shutil.rmtree(tree, ignore_errors=True)
            build(tree)
            _tar_of(tree, paths[name], ".")
            shutil.rmtree(tree)
    paths["usr-share.gz"] = CACHE / "usr-share.tar.gz"
    paths["usr-share.zst"] = CACHE / "usr-share.tar.zst"
    _compress(paths["usr-share"], paths["usr-share.gz"], "gzip")
    _compress(paths["usr-share"], paths["usr-share.zst"], "zstd")
    return paths


@pytest.fixture
def fresh() -> Iterator[Callable[[str], Path]]:
    """fresh(fs): an empty directory on that file system, the previous one removed."""
    made: list[Path] = []

    def make(fs: str) -> Path:
        for p in made:
            shutil.rmtree(p, ignore_errors=True)
        made.clear()
        d = FILESYSTEMS[fs] / f"pysnap-bench-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        made.append(d)
        return d

    yield make
    for p in made:
        shutil.rmtree(p, ignore_errors=True)


# ---- apply ---------------------------------------------------------------------------


def _tar_x(flags: list[str]) -> Callable[[Path, Path], Any]:
    def run(layer: Path, target: Path) -> None:
        subprocess.run(["tar", *flags, "-xf", str(layer), "-C", str(target)], check=True)

    return run


def _tarfile(layer: Path, target: Path) -> None:
    with tarfile.open(layer) as t:
        t.extractall(target, numeric_owner=True, filter="fully_trusted")


def _decompress_only(layer: Path, target: Path) -> None:
    with open(layer, "rb", buffering=0) as f:
        head = f.read(8)
        for _ in compression.decoded(f, head, compression.detect(head), len):
            pass


APPLY: dict[str, dict[str, Callable[[Path, Path], Any]]] = {
    "usr-share": {
        "pysnap": lambda layer, t: apply_stream(str(t), [], layer),
        "tar -x": _tar_x(["--numeric-owner"]),
        "tarfile": _tarfile,
    },
    "usr-share.gz": {
        "pysnap": lambda layer, t: apply_stream(str(t), [], layer),
        "decompress only": _decompress_only,
        "tar -xz": _tar_x(["--numeric-owner", "-z"]),
        **({"tar -I igzip": _tar_x(["--numeric-owner", "-I", "igzip"])} if IGZIP else {}),
    },
    "usr-share.zst": {
        "pysnap": lambda layer, t: apply_stream(str(t), [], layer),
        "decompress only": _decompress_only,
        "tar --zstd": _tar_x(["--numeric-owner", "--zstd"]),
    },
    "small100k": {
        "pysnap": lambda layer, t: apply_stream(str(t), [], layer),
        "tar -x": _tar_x(["--numeric-owner"]),
    },
    "busybox": {
        "pysnap": lambda layer, t: apply_stream(str(t), [], layer),
        "tar -x": _tar_x(["--numeric-owner"]),
        "tarfile": _tarfile,
    },
}
# containerd 1.6's overlay applier (DecompressStream, a diff-ID digest, archive.Apply
# with overlay whiteouts) in benchmarks/containerd_overlay, on these layers
CONTAINERD = "containerd 1.6"
CONTAINERD_LAYERS = ("usr-share", "usr-share.gz", "small100k", "busybox")
# usr-share rounds are long (seconds each); set PYSNAP_BENCH_ROUNDS for more
BIG_ROUNDS = int(os.environ.get("PYSNAP_BENCH_ROUNDS", "1"))
ROUNDS = {
    "usr-share": BIG_ROUNDS,
    "usr-share.gz": BIG_ROUNDS,
    "usr-share.zst": BIG_ROUNDS,
    "small100k": BIG_ROUNDS,
    "busybox": 20,
}
# On ext4 the gzip layer shows whether decompression still hides behind the
# writes; zlib's tar -xz, tarfile and decompression alone (no writes) add nothing there.
_TMPFS_ONLY = ("tarfile", "decompress only", "tar -xz")
CASES = [
    (layer, fs, impl)
    for layer, impls in APPLY.items()
    for fs in FILESYSTEMS
    for impl in [*impls, *([CONTAINERD] if layer in CONTAINERD_LAYERS else [])]
    if not (fs == "ext4" and (layer.endswith(".zst") or impl in _TMPFS_ONLY))
]


@pytest.mark.parametrize("layer, fs, impl", CASES)
def test_apply(
    benchmark: Any,
    request: pytest.FixtureRequest,
    layers: dict[str, Path],
    fresh: Any,
    layer: str,
    fs: str,
    impl: str,
) -> None:
    benchmark.group = f"apply {layer} on {fs}"
    if fs == "ext4":
        request.getfixturevalue("ext4")
    run: Callable[[Path, Path], Any]
    if impl == CONTAINERD:
        driver = request.getfixturevalue("containerd_driver")

        def run_containerd(layer_: Path, target_: Path) -> None:
            driver.call("apply", target_, layer_)

        run = run_containerd
    else:
        run = APPLY[layer][impl]
    target: list[Path] = []

    def setup() -> None:
        target[:] = [fresh(fs)]

    rounds = 1 if impl == "tarfile" and layer == "usr-share" else ROUNDS[layer]
    driver_cpu = cpu_of(driver.pid) if impl == CONTAINERD else 0.0
    with _cpu_time() as cpu:
        benchmark.pedantic(lambda: run(layers[layer], target[0]), setup=setup, rounds=rounds)
    if impl == CONTAINERD:  # the driver's own CPU, not a child waited for
        cpu[0] += cpu_of(driver.pid) - driver_cpu
    benchmark.extra_info["cpu_s_per_round"] = cpu[0] / rounds
    _record(benchmark.group, impl, median(benchmark), cpu[0] / rounds)


# ---- diff ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def usr_share_snapshots(layers: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """The usr-share layer applied into a snapshot on tmpfs, and a child with 24 changes."""
    root = FILESYSTEMS["tmpfs"] / f"pysnap-bench-snap-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    with pysnap.OverlaySnapshotter(root, sync=False, upperdir_label=True) as sn:
        sn.prepare("base")
        sn.apply("base", layers["usr-share"])
        sn.commit("b", "base")
        sn.prepare("work", "b")
        work = Path(sn.stat("work").labels["containerd.io/snapshot/overlay.upperdir"])
        share = work / "usr/share"
        mnt = root / "mnt"
        mnt.mkdir()
        pysnap.mount_all(sn.mounts("work"), mnt)
        try:  # 24 changes through overlayfs: new files, edits, deletions, a new dir
            for i in range(8):
                (mnt / f"usr/share/new-{i}").write_bytes(b"new" * 1000)
            docs = sorted((mnt / "usr/share/doc").iterdir())[:8]
            for d in docs[:4]:
                shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
            for d in docs[4:8]:
                os.utime(d)
            (mnt / "usr/share/newdir").mkdir()
            for i in range(7):
                (mnt / f"usr/share/newdir/f{i}").write_bytes(b"x")
        finally:
            pysnap.unmount(mnt)
        base = Path(sn.stat("b").labels["containerd.io/snapshot/overlay.upperdir"])
        assert share.exists()
        yield {"usr-share": base, "24 changes": work}
    shutil.rmtree(root, ignore_errors=True)


def _pysnap_diff(compression_: str | None) -> Callable[[Path, Path], Any]:
    def run(upper: Path, out: Path) -> None:
        diff_upper("bench", str(upper), out, compression_=compression_, level=None)

    return run


def _tar_c(flags: list[str]) -> Callable[[Path, Path], Any]:
    def run(upper: Path, out: Path) -> None:
        subprocess.run(
            ["tar", "--numeric-owner", *flags, "-cf", str(out), "-C", str(upper), "."], check=True
        )

    return run


DIFF: dict[str, Callable[[Path, Path], Any]] = {
    "pysnap": _pysnap_diff(None),
    "tar -c": _tar_c([]),
    "pysnap gzip": _pysnap_diff("gzip"),
    **({"tar -c -I igzip": _tar_c(["-I", "igzip"])} if IGZIP else {}),
}


@pytest.mark.parametrize("tree", ["usr-share", "24 changes"])
@pytest.mark.parametrize("impl", DIFF)
def test_diff(benchmark: Any, usr_share_snapshots: dict[str, Path], tree: str, impl: str) -> None:
    benchmark.group = f"diff {tree} on tmpfs"
    out = FILESYSTEMS["tmpfs"] / f"pysnap-bench-diff-{os.getpid()}.tar"
    rounds = BIG_ROUNDS if tree == "usr-share" else 30
    try:
        with _cpu_time() as cpu:
            benchmark.pedantic(
                DIFF[impl],
                args=(usr_share_snapshots[tree], out),
                setup=lambda: out.unlink(missing_ok=True),
                rounds=rounds,
            )
    finally:
        out.unlink(missing_ok=True)
    benchmark.extra_info["cpu_s_per_round"] = cpu[0] / rounds
    _record(benchmark.group, impl, median(benchmark), cpu[0] / rounds)


def test_diff_alternated_with_tar(benchmark: Any, usr_share_snapshots: dict[str, Path]) -> None:
    """``tar -c``, each round followed by a round of pysnap's diff: on a shared machine
    whose speed drifts between groups, the ratio of rounds run side by side."""
    group = "diff usr-share on tmpfs"
    benchmark.group = group
    upper = usr_share_snapshots["usr-share"]
    out = FILESYSTEMS["tmpfs"] / f"pysnap-bench-diff-{os.getpid()}.tar"
    ours: list[float] = []

    def pysnap_round() -> None:
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        DIFF["pysnap"](upper, out)
        ours.append(time.perf_counter() - start)

    rounds = 0

    def setup() -> None:
        nonlocal rounds
        if rounds:  # after tar's round, pysnap's
            pysnap_round()
        rounds += 1
        out.unlink(missing_ok=True)

    try:
        benchmark.pedantic(
            DIFF["tar -c"], args=(upper, out), setup=setup, rounds=max(BIG_ROUNDS, 5)
        )
        pysnap_round()
    finally:
        out.unlink(missing_ok=True)
    if benchmark.stats:
        benchmark.extra_info["pysnap_alternated_s"] = ours
        _record(group, "pysnap, alternated", statistics.median(ours))
        _record(group, "tar -c, alternated", median(benchmark))


# ---- syscalls and memory ----------------------------------------------------------


_APPLY_SCRIPT = (
    "import sys\nfrom pysnap.archive.apply import apply_stream\n"
    "print(apply_stream(sys.argv[2], [], sys.argv[1]).entries)\n"
)


def _strace_calls(cmd: list[str]) -> int:
    log = CACHE / "strace.txt"
    subprocess.run(
        ["strace", "-f", "-c", "-o", str(log), *cmd], check=True, stdout=subprocess.DEVNULL
    )
    total = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", log.read_text(), re.M)
    assert total, log.read_text()
    return int(total[1])


@pytest.mark.parametrize("layer", ["usr-share", "small100k"])
def test_syscalls_per_entry(
    benchmark: Any, layers: dict[str, Path], fresh: Any, layer: str
) -> None:
    """strace -f -c of the whole process (Python's start-up included) against tar -x."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    benchmark.group = f"syscalls per entry, {layer}"
    with tarfile.open(layers[layer]) as t:
        entries = sum(1 for _ in t)
    ENTRIES[layer] = entries
    res = {}
    for name, cmd in (
        ("pysnap", [sys.executable, "-c", _APPLY_SCRIPT, str(layers[layer])]),
        ("tar -x", ["tar", "--numeric-owner", "-xf", str(layers[layer]), "-C"]),
    ):
        target = fresh("tmpfs")
        res[name] = _strace_calls([*cmd, str(target)]) / entries
    benchmark.extra_info.update(res)
    _record(benchmark.group, "pysnap", res["pysnap"])
    _record(benchmark.group, "tar -x", res["tar -x"])
    benchmark.pedantic(lambda: None, rounds=1)


def _vm_hwm_kb(script: str, *args: str) -> int:
    code = script + (
        "\nfor line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'):\n"
        "        print(line.split()[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[-1])


def test_peak_memory(benchmark: Any, layers: dict[str, Path], fresh: Any) -> None:
    """RSS growth of applying the 1.1 GB gzip layer: VmHWM of a run less that of an import."""
    benchmark.group = "peak memory (MB of RSS growth)"
    imports = "import sys\nfrom pysnap.archive.apply import apply_stream\n"
    base = _vm_hwm_kb(imports)
    used = _vm_hwm_kb(_APPLY_SCRIPT, str(layers["usr-share.gz"]), str(fresh("tmpfs")))
    benchmark.extra_info["rss_growth_mb"] = (used - base) / 1024
    _record(benchmark.group, "pysnap gzip apply", (used - base) / 1024)
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.fixture(scope="session", autouse=True)
def _summary() -> Iterator[None]:
    yield
    if not MEDIANS:
        return
    lines = []
    groups = sorted({g for g, _ in MEDIANS})
    for g in groups:
        row = {impl: v for (gg, impl), v in MEDIANS.items() if gg == g}
        ref = row.get("pysnap", next(iter(row.values())))
        cells = ", ".join(
            f"{impl} {v:.3f}" + (f" ({v / ref:.2f}x)" if ref and g[:3] in ("app", "dif") else "")
            for impl, v in row.items()
        )
        lines.append(f"{g}: {cells}")
    text = "\n".join(lines) + "\n"
    with open(CACHE / "layers-summary.txt", "w") as f:
        f.write(text)
    print("\n" + text)
