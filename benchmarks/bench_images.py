"""Image benchmarks (issue 13): unpack and export beside containerd 1.6 and umoci.

Run: pytest benchmarks/bench_images.py --benchmark-only -p no:cacheprovider

The image: 5 gzip layers, together about 85,000 files and 1 GB uncompressed,
built once (tar --sort=name, gzip -1) and cached under PYSNAP_BENCH_IMAGES
(default /var/tmp/pysnap-bench-images). Every row runs on tmpfs (/dev/shm)
and on an ext4 made for the run on the root disk (benchmarks/conftest.py says
why not the root file system), each round into a fresh root:

* unpack: pysnap's unpack (parallel, the default, sequential, and parallel
  with sync=False, which leaves the layers' files to the kernel's writeback
  as containerd does), containerd 1.6 unpacking the same
  image into its overlayfs snapshotter with the content already ingested
  (``ctr images import --no-unpack`` once, then ``ctr images mount``, which
  unpacks, per round), each of its rounds followed by a round of pysnap's
  parallel unpack (the side-by-side summary at the end: the same-run ratio
  on a shared machine), and ``umoci unpack``; extra_info gives the CPU
  seconds of each (containerd: the daemon's, its children's and ctr's);
* unpack tmpfs, pipeline settings: pysnap's parallel unpack with its
  defaults, with a second layer admitted at once, and with smaller and
  larger batches between the pipeline's threads;
* export: pysnap's export of the image plus one layer made on pysnap (the
  five source blobs reused, one layer diffed), beside ``umoci repack`` of the
  same change to an unpacked bundle.

extra_info gives the ratio of each row to pysnap's in its group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXT4_MOUNT, detach_mounts_under, record
from timing import cpu_of, median

import pysnap
from pysnap.fsutil import remove_tree
from pysnap.images import export, unpack

# PYSNAP_BENCH_IMAGE_SCALE=0.01 makes a small image, for a quick smoke run
SCALE = float(os.environ.get("PYSNAP_BENCH_IMAGE_SCALE", "1"))
CACHE = (
    Path(os.environ.get("PYSNAP_BENCH_IMAGES", "/var/tmp/pysnap-bench-images")) / f"scale-{SCALE:g}"
)
# tmpfs, and a new ext4 on the root disk (conftest.ext4 says why not the root file system)
FILESYSTEMS = {"tmpfs": "/dev/shm", "ext4": str(EXT4_MOUNT)}
# (files, bytes) per layer: about 85,000 files and 1 GB in all
LAYERS = [
    (30_000, 360 << 20),
    (25_000, 300 << 20),
    (15_000, 180 << 20),
    (10_000, 110 << 20),
    (5_000, 50 << 20),
]
REF = "bench"
MEDIANS: dict[tuple[str, str], float] = {}


# ---- the image, built once and cached ---------------------------------------------


def _pool() -> bytes:
    """64 MiB of word-like text: gzip takes it to about a third, as real layers."""
    rng = random.Random(13)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 10))) for _ in range(5000)]
    return b" ".join(rng.choices(words, k=11_000_000))[: 64 << 20]


def _build_layer(
    n: int, files: int, size: int, pool: bytes, work: Path, layout: Path
) -> tuple[str, dict[str, Any]]:
    rng = random.Random(n)
    top = work / f"layer-{n}"
    mean = size // files
    for i in range(files):
        d = top / f"l{n}" / f"d{i // 500:03d}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        length = min(int(rng.expovariate(1 / mean)), 4 << 20)
        start = rng.randrange(0, len(pool) - length)
        (d / f"f{i:05d}").write_bytes(pool[start : start + length])
    tar = work / f"layer-{n}.tar"
    subprocess.run(
        ["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@1700000000",
         "-C", str(top), "-cf", str(tar), "."],
        check=True,
    )  # fmt: skip
    remove_tree(top)
    diff_id = "sha256:" + _sha_file(tar)
    blob = work / f"layer-{n}.tar.gz"
    with open(blob, "wb") as out:
        subprocess.run(["gzip", "-1", "-n", "-c", str(tar)], stdout=out, check=True)
    tar.unlink()
    digest = "sha256:" + _sha_file(blob)
    os.rename(blob, layout / "blobs" / "sha256" / digest[7:])
    size = os.stat(layout / "blobs" / "sha256" / digest[7:]).st_size
    desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": digest,
        "size": size,
    }
    return diff_id, desc


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_doc(layout: Path, obj: Any, media_type: str) -> dict[str, Any]:
    data = json.dumps(obj).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _image() -> Path:
    layout = CACHE / "oci"
    if (layout / "index.json").exists():
        return layout
    remove_tree(CACHE)  # a build that did not finish
    (layout / "blobs" / "sha256").mkdir(parents=True)
    work = CACHE / "work"
    work.mkdir()
    pool = _pool()
    built = [
        _build_layer(n, max(1, int(f * SCALE)), int(s * SCALE), pool, work, layout)
        for n, (f, s) in enumerate(LAYERS)
    ]
    host = pysnap.images.Platform.host()
    config = {
        "architecture": host.architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d for d, _ in built]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _write_doc(layout, config, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc for _, desc in built],
    }
    top = _write_doc(layout, manifest, "application/vnd.oci.image.manifest.v1+json")
    top["annotations"] = {
        "org.opencontainers.image.ref.name": REF,
        "io.containerd.image.name": f"example.com/{REF}:1",
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    subprocess.run(["tar", "-C", str(layout), "-cf", str(CACHE / "oci.tar"), "."], check=True)
    remove_tree(work)
    return layout


@pytest.fixture(scope="session")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts)")
    return _image()


@pytest.fixture(params=list(FILESYSTEMS))
def scratch(request: pytest.FixtureRequest) -> Iterator[Path]:
    if request.param == "ext4":
        request.getfixturevalue("ext4")
    d = Path(tempfile.mkdtemp(prefix="pysnap-bench-img-", dir=FILESYSTEMS[request.param]))
    yield d
    remove_tree(d)


def _record(benchmark: Any, group: str, row: str, base: str = "pysnap") -> None:
    MEDIANS[(group, row)] = median(benchmark)
    if (group, base) in MEDIANS:
        ratio = MEDIANS[(group, row)] / MEDIANS[(group, base)]
        benchmark.extra_info[f"ratio to {base}"] = round(ratio, 2)


def _fs(scratch: Path) -> str:
    return next(k for k, v in FILESYSTEMS.items() if str(scratch).startswith(v))


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process, or of its waited-for children."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _cpu_info(benchmark: Any, cpu: list[float]) -> None:
    benchmark.extra_info["cpu_s per round"] = [round(c, 2) for c in cpu]


# ---- unpack -------------------------------------------------------------------------


def _fresh(scratch: Path, name: str) -> Path:
    path = scratch / name
    detach_mounts_under(path)
    remove_tree(path)
    return path


# row: (parallel, sync). pysnap flushes each layer (syncfs) before it commits it, so a
# committed layer is on disk; containerd 1.6 leaves the files of its layers to the
# kernel's writeback (only its metadata is flushed). "not flushed" is pysnap doing
# the same (sync=False), to show what the flushes cost on ext4.
UNPACKS = {
    "pysnap": (True, True),
    "pysnap sequential": (False, True),
    "pysnap not flushed": (True, False),
}


@pytest.mark.parametrize("row", list(UNPACKS))
def test_unpack_pysnap(benchmark: Any, image: Path, scratch: Path, row: str) -> None:
    group = f"unpack {_fs(scratch)}"
    benchmark.group = group
    parallel, sync = UNPACKS[row]
    _unpack_rounds(benchmark, image, scratch, parallel, rounds=2, sync=sync)
    _record(benchmark, group, row)


def _batches(size: int) -> dict[str, int]:
    """Batches of ``size`` between the pipeline's threads (apply.py imports BATCH as its own)."""
    return {f"pysnap.archive.{module}.BATCH": size for module in ("pipeline", "apply")}


# The settings of the pipeline a reader would try first, beside the defaults: a second
# layer admitted at once (IDLE -1: whatever the cores do), smaller or larger batches.
TUNINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "two layers at once": {"pysnap.images.admission.IDLE": -1.0},
    "batches of 256 KiB": _batches(256 << 10),
    "batches of 4 MiB": _batches(4 << 20),
}


@pytest.mark.parametrize("scratch", ["tmpfs"], indirect=True)
@pytest.mark.parametrize("tuning", list(TUNINGS))
def test_unpack_tuning(
    benchmark: Any, image: Path, scratch: Path, tuning: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = "unpack tmpfs, pipeline settings"
    benchmark.group = group
    for target, value in TUNINGS[tuning].items():
        monkeypatch.setattr(target, value)
    _unpack_rounds(benchmark, image, scratch, True, rounds=3)
    _record(benchmark, group, tuning, base="defaults")


def _unpack_rounds(
    benchmark: Any, image: Path, scratch: Path, parallel: bool, rounds: int, sync: bool = True
) -> None:
    """Time ``rounds`` unpacks of ``image``, each into a fresh root under ``scratch``."""
    state: dict[str, Any] = {}
    cpu: list[float] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if "sn" in state:
            state["sn"].close()
        state["sn"] = pysnap.OverlaySnapshotter(_fresh(scratch, "root"), sync=sync)
        return (state["sn"],), {}

    def run(sn: pysnap.OverlaySnapshotter) -> pysnap.images.Image:
        before = _cpu()
        result = unpack(sn, image, parallel=parallel)
        cpu.append(_cpu() - before)
        return result

    result = benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["files"] = sum(layer.entries for layer in result.layers)
    _cpu_info(benchmark, cpu)
    state["sn"].close()


def test_unpack_umoci(benchmark: Any, image: Path, scratch: Path) -> None:
    group = f"unpack {_fs(scratch)}"
    benchmark.group = group

    cpu: list[float] = []

    def run() -> None:
        before = _cpu(resource.RUSAGE_CHILDREN)
        subprocess.run(
            ["umoci", "unpack", "--image", f"{image}:{REF}", str(scratch / "bundle")],
            check=True,
            capture_output=True,
        )
        cpu.append(_cpu(resource.RUSAGE_CHILDREN) - before)

    benchmark.pedantic(
        run, setup=lambda: _fresh(scratch, "bundle") and None, rounds=2, iterations=1
    )
    _cpu_info(benchmark, cpu)
    _record(benchmark, group, "umoci unpack")


@contextlib.contextmanager
def _containerd(
    root: Path,
) -> Iterator[tuple[Callable[..., subprocess.CompletedProcess[str]], Callable[[], float]]]:
    """A private containerd 1.6, its root (overlayfs snapshots) under ``root``: its ctr, and
    the CPU seconds of the daemon, its children and every ctr so far."""
    base = Path(tempfile.mkdtemp(prefix="pysnap-bctd-", dir="/tmp"))  # short socket paths
    address = str(base / "c.sock")
    (base / "config.toml").write_text(
        f'version = 2\nroot = "{root}"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{address}"\n[ttrpc]\n  address = "{address}.ttrpc"\n'
        f'[debug]\n  address = "{base}/debug.sock"\n'
    )
    with open(base / "log", "wb") as log:
        daemon = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(address) and time.monotonic() < deadline:
            time.sleep(0.05)

        def ctr(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ctr", "--address", address, *args], check=True, capture_output=True, text=True
            )

        yield ctr, lambda: cpu_of(daemon.pid) + _cpu(resource.RUSAGE_CHILDREN)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        for m in pysnap.mountinfo.mounts_under(str(root)):
            pysnap.unmount(m.mount_point, detach=True)
        remove_tree(base)


@pytest.mark.skipif(shutil.which("containerd") is None, reason="needs containerd")
def test_unpack_containerd(benchmark: Any, image: Path, scratch: Path) -> None:
    """containerd's unpack, each round followed by a round of pysnap's parallel unpack."""
    group = f"unpack {_fs(scratch)}"
    benchmark.group = group
    name = f"example.com/{REF}:1"
    # A new mount point (the view's key) each round: with one key reused,
    # containerd 1.6 sometimes kept the removed view as a child of the top
    # layer ("cannot remove snapshot with child" for the whole chain, which
    # no longer listed it), in about one run of the row in four.
    targets: list[Path] = []
    ours: list[float] = []
    # "containerd meanwhile": the daemon's CPU during pysnap's rounds
    cpu: dict[str, list[float]] = {"containerd": [], "pysnap": [], "containerd meanwhile": []}
    with _containerd(scratch / "containerd") as (ctr, ctr_cpu):
        ctr("images", "import", "--no-unpack", str(CACHE / "oci.tar"))  # content ingested once
        backend = scratch / "containerd" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"

        def pysnap_round() -> None:
            with pysnap.OverlaySnapshotter(_fresh(scratch, "root")) as sn:
                before, start, theirs = _cpu(), time.perf_counter(), ctr_cpu()
                unpack(sn, image)
                ours.append(time.perf_counter() - start)
                cpu["pysnap"].append(_cpu() - before)
                cpu["containerd meanwhile"].append(ctr_cpu() - theirs)
            _fresh(scratch, "root")

        def remove_chain() -> None:
            if targets:  # none before the first round
                ctr("images", "unmount", "--rm", str(targets[-1]))

            # children first (a pass removes the leaves); right after the
            # unmount, containerd may still hold some for a moment
            def keys() -> list[str]:
                return [ln.split()[0] for ln in ctr("snapshots", "ls").stdout.splitlines()[1:]]

            errors: dict[str, str] = {}  # the last refusal of each key left
            deadline = time.monotonic() + 60
            while (left := keys()) and time.monotonic() < deadline:
                for key in left:
                    try:
                        ctr("snapshots", "rm", key)
                    except subprocess.CalledProcessError as e:
                        errors[key] = e.stderr.strip()
                time.sleep(0.1)
            assert not keys(), f"containerd's snapshots were not all removed: {errors}"
            # containerd's garbage collector removes the directories after
            # `snapshots rm` has returned: measured 0.3 s and 0.3 CPU-s on
            # tmpfs, which would otherwise run inside pysnap's timed round
            while any(backend.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(backend.iterdir()), f"containerd left {sorted(backend.iterdir())}"

        def after_containerd() -> None:
            # containerd's chain is removed before pysnap's round, as pysnap's
            # tree is before containerd's: each tool then writes into the pages
            # the other just freed. On this VM, pages that stayed free longer
            # were handed back to the host, and the first write to each costs a
            # host fault (perf: copy_folio_from_iter_atomic went from 10% to 44%
            # of all samples, +2.7 s of system time, when pysnap ran beside
            # containerd's unremoved chain).
            cpu["containerd"].append(ctr_cpu() - state.pop())
            remove_chain()
            pysnap_round()

        def setup() -> None:
            if state:
                after_containerd()
            else:
                remove_chain()
            targets.append(scratch / f"mnt-{len(targets)}")
            targets[-1].mkdir()
            state.append(ctr_cpu())

        state: list[float] = []
        benchmark.pedantic(
            lambda: ctr("images", "mount", name, str(targets[-1])),
            setup=setup,
            rounds=3,
            iterations=1,
        )
        after_containerd()
    benchmark.extra_info["cpu_s per round"] = {k: [round(c, 2) for c in v] for k, v in cpu.items()}
    rounds = benchmark.stats.stats.data if benchmark.stats else []
    record(benchmark, ours, list(rounds))
    _record(benchmark, group, "containerd 1.6")


# ---- export -------------------------------------------------------------------------


def _change(root: Path) -> None:
    """The layer made on top: 1,000 small files."""
    d = root / "app"
    d.mkdir()
    for i in range(1000):
        (d / f"f{i}").write_bytes(b"x" * (i * 10))


def test_export_pysnap(benchmark: Any, image: Path, scratch: Path) -> None:
    group = f"export {_fs(scratch)}"
    benchmark.group = group
    with pysnap.OverlaySnapshotter(scratch / "root") as sn:
        top = unpack(sn, image).top
        with pysnap.mounted(sn.prepare("build", top)) as root:
            _change(Path(root))
        sn.commit("app", "build")
        benchmark.pedantic(
            export,
            args=(sn, "app", scratch / "out"),
            setup=lambda: _fresh(scratch, "out") and None,
            rounds=3,
            iterations=1,
        )
    _record(benchmark, group, "pysnap")


def test_export_umoci_repack(benchmark: Any, image: Path, scratch: Path) -> None:
    group = f"export {_fs(scratch)}"
    benchmark.group = group

    def setup() -> None:
        _fresh(scratch, "oci")
        _fresh(scratch, "bundle")
        subprocess.run(["cp", "-a", str(image), str(scratch / "oci")], check=True)
        subprocess.run(
            ["umoci", "unpack", "--image", f"{scratch / 'oci'}:{REF}", str(scratch / "bundle")],
            check=True,
            capture_output=True,
        )
        _change(scratch / "bundle" / "rootfs")

    def run() -> None:
        subprocess.run(
            ["umoci", "repack", "--image", f"{scratch / 'oci'}:{REF}", str(scratch / "bundle")],
            check=True,
            capture_output=True,
        )

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    _record(benchmark, group, "umoci repack")
