"""snapcore.du.disk_usage against GNU du, its pure-Python twin, and itself on threads.

Semantics: containerd's fs.DiskUsage (issue 3). GNU du counts hard links once
too, and with several operands (`-c`) it counts an inode seen under an earlier
operand only once, so `du -sc` is the oracle for every case below.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interrupts import interrupt_each_call
from privileges import unprivileged

from pysnap import _reference
from pysnap.fsutil import remove_tree
from snapcore import du

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

IMPLS: dict[str, Callable[..., tuple[int, int]]] = {
    "threads1": lambda *r, **kw: du.disk_usage(*r, threads=1, **kw),
    "threads4": lambda *r, **kw: du.disk_usage(*r, threads=4, **kw),
    "default": du.disk_usage,
    "reference": _reference.disk_usage,
}


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> Callable[..., tuple[int, int]]:
    return IMPLS[request.param]


def gnu_du(*roots: str | bytes | Path, apparent: bool = False) -> tuple[int, int]:
    """(size, inodes) of roots together, by GNU du -sc (its total line)."""
    args = [os.fsencode(r) for r in roots]

    def total(*opts: str) -> int:
        out = subprocess.run(["du", "-sc", *opts, "--", *args], capture_output=True, check=True)
        return int(out.stdout.rstrip(b"\n").split(b"\n")[-1].split(b"\t")[0])

    size = total("--apparent-size", "-b") if apparent else total("--block-size=512") * 512
    return size, total("--inodes")


def check_all(*roots: str | bytes | Path) -> tuple[int, int]:
    """Every implementation, both modes, equals GNU du; returns (size, inodes)."""
    want = gnu_du(*roots)
    want_apparent = gnu_du(*roots, apparent=True)
    for name, fn in IMPLS.items():
        assert fn(*roots) == want, name
        assert fn(*roots, apparent=True) == want_apparent, name
    return want


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fast_base() -> str | None:
    """/dev/shm when it is a writable tmpfs: big trees build there in seconds, even
    while other tests keep the disk's journal busy."""
    try:
        if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize > 1 << 30:
            return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    except OSError:
        pass
    return None


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A temporary dir for large trees (tmpfs if there is one), removed with remove_tree."""
    base = _fast_base()
    d = Path(tempfile.mkdtemp(prefix="pysnap-du-", dir=base)) if base else tmp_path / "fast"
    d.mkdir(exist_ok=True)
    yield d
    remove_tree(d)


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied by remove_tree (shutil.rmtree recurses and fails on deep trees)."""
    yield tmp_path
    for p in tmp_path.iterdir():
        remove_tree(p)


def make_chain(top: Path, depth: int) -> None:
    """top/d/d/.../d with a file at the bottom, by dir fds (the path exceeds PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, _DIR)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"x" * 5000)
        os.close(wfd)
    finally:
        os.close(fd)


def make_files(top: Path, ndirs: int, nfiles: int, data: bytes = b"") -> None:
    for i in range(ndirs):
        d = top / f"d{i:04d}"
        d.mkdir(parents=True)
        fd = os.open(d, _DIR)
        try:
            for j in range(nfiles):
                f = os.open(f"f{j}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                if data:
                    os.write(f, data)
                os.close(f)
        finally:
            os.close(fd)


def make_zoo(top: Path) -> None:
    """Every kind of entry the issue lists, in one tree."""
    top.mkdir()
    (top / "empty").mkdir()
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "small").write_bytes(b"a")
    (top / "big").write_bytes(b"b" * 100_000)
    (top / "sub" / "deeper" / "f").write_bytes(b"c" * 9000)
    # hard links inside one root, in two directories
    os.link(top / "big", top / "sub" / "big-link")
    os.link(top / "big", top / "sub" / "deeper" / "big-link2")
    # sparse: 1 GiB apparent, a few blocks used
    with open(top / "sparse", "wb") as f:
        f.truncate(1 << 30)
        f.seek(1 << 29)
        f.write(b"data")
    # symlinks: counted themselves, never followed
    (top / "link-to-big").symlink_to("big")
    (top / "link-to-dir").symlink_to(top / "sub")
    (top / "dangling").symlink_to("nowhere")
    (top / "long-link").symlink_to("x" * 1000)
    os.mkfifo(top / "fifo")
    os.mknod(top / "socket", 0o600 | stat.S_IFSOCK)
    if os.geteuid() == 0:
        os.mknod(top / "whiteout", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    # names: non-UTF-8 bytes, newlines, the longest name
    b = os.fsencode(top)
    os.mkdir(b + b"/\xff\xfe dir")
    with open(b + b"/\xff\xfe dir/\x80\x81", "wb") as f:
        f.write(b"z" * 3000)
    with open(b + b"/new\nline\n", "wb") as f:
        f.write(b"n")
    os.mkdir(b + b"/" + b"L" * 255)
    (top / "sub" / ("x" * 255)).write_bytes(b"q" * 70_000)


# ---- against GNU du -------------------------------------------------------------


def test_zoo_matches_gnu_du(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    size, inodes = check_all(tmp_path / "zoo")
    assert inodes >= 20
    # bytes and PathLike roots give the same
    assert du.disk_usage(os.fsencode(tmp_path / "zoo")) == (size, inodes)


def test_sparse_file_counts_blocks_not_length(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    size, _ = du.disk_usage(tmp_path / "zoo" / "sparse")
    apparent, _ = du.disk_usage(tmp_path / "zoo" / "sparse", apparent=True)
    assert apparent == 1 << 30
    assert 0 < size < 1 << 20
    assert (size, 1) == gnu_du(tmp_path / "zoo" / "sparse")


def test_hard_links_across_two_roots(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_files(a, 3, 10, b"x" * 5000)
    make_files(b, 2, 10, b"y" * 100)
    for j in range(10):
        os.link(a / "d0000" / f"f{j}", b / f"link{j}")
    both = check_all(a, b)
    assert both == check_all(b, a)
    sa, ia = du.disk_usage(a)
    sb, ib = du.disk_usage(b)
    assert both[1] == ia + ib - 10
    assert both[0] < sa + sb


def test_same_root_twice(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    once = du.disk_usage(tmp_path / "zoo")
    for fn in IMPLS.values():
        assert fn(tmp_path / "zoo", tmp_path / "zoo") == once
        assert fn(tmp_path / "zoo", str(tmp_path / "zoo") + "/.") == once
    assert gnu_du(tmp_path / "zoo", tmp_path / "zoo") == once


def test_root_inside_root_either_order(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    zoo, inner = tmp_path / "zoo", tmp_path / "zoo" / "sub"
    whole = check_all(zoo)
    assert check_all(zoo, inner) == whole
    assert check_all(inner, zoo) == whole
    for fn in IMPLS.values():
        # a file root and a symlink root inside a directory root count nothing more
        assert fn(zoo / "small", zoo, zoo / "link-to-dir", zoo / "sub" / "big-link") == whole
        assert fn(zoo, zoo / "small", zoo / "sub" / "deeper") == whole


def test_file_and_symlink_roots(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    zoo = tmp_path / "zoo"
    check_all(zoo / "big")
    check_all(zoo / "big", zoo / "sub" / "big-link")  # one inode
    assert du.disk_usage(zoo / "big", zoo / "sub" / "big-link")[1] == 1
    # a symlink root is the link itself, not its target
    st = os.lstat(zoo / "link-to-dir")
    assert du.disk_usage(zoo / "link-to-dir") == (st.st_blocks * 512, 1)
    assert du.disk_usage(zoo / "link-to-dir", apparent=True) == (st.st_size, 1)
    check_all(zoo / "link-to-dir")


def test_empty_directory_and_no_roots(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    assert check_all(tmp_path / "e")[1] == 1
    assert du.disk_usage() == (0, 0)
    assert _reference.disk_usage() == (0, 0)


def test_deep_chain(deep_tmp: Path) -> None:
    top = deep_tmp / "chain"
    make_chain(top, 10_000)
    before = open_fds()
    _, inodes = check_all(top)
    assert inodes == 10_002
    assert open_fds() == before


def test_wide_and_deep_with_branches(deep_tmp: Path) -> None:
    """A comb: every level has a side directory, so the fd window must reopen frames."""
    top = deep_tmp / "comb"
    top.mkdir()
    fd = os.open(top, _DIR)
    try:
        for i in range(300):
            os.mkdir("side", dir_fd=fd)
            f = os.open("side/f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"s" * (i + 1))
            os.close(f)
            os.mkdir("z", dir_fd=fd)
            nfd = os.open("z", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    before = open_fds()
    assert check_all(top)[1] == 1 + 300 * 3
    assert open_fds() == before


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """100,000 files: 100 directories of 1,000, some hard links."""
    base = _fast_base()
    top = Path(
        tempfile.mkdtemp(prefix="pysnap-du-", dir=base) if base else tmp_path_factory.mktemp("du")
    )
    top = top / "t"
    make_files(top, 100, 1000)
    for j in range(0, 1000, 10):
        os.link(top / "d0000" / f"f{j}", top / "d0001" / f"h{j}")
    yield top
    remove_tree(top.parent)


def test_100k_files(big_tree: Path) -> None:
    _, inodes = check_all(big_tree)
    assert inodes == 1 + 100 + 100_000


def test_progress_reports_running_totals(big_tree: Path) -> None:
    for threads in (1, 2, None):
        seen: list[tuple[int, int]] = []
        final = du.disk_usage(
            big_tree,
            threads=threads,
            progress=lambda n, b, seen=seen: seen.append((n, b)),
            progress_every=5000,
        )
        assert len(seen) >= 10, threads
        assert seen == sorted(seen)
        assert all(0 < n <= final[1] and 0 <= b <= final[0] for n, b in seen)


# ---- errors ---------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    for fn in IMPLS.values():
        with pytest.raises(FileNotFoundError) as e:
            fn(tmp_path, tmp_path / "missing")
        assert e.value.filename == tmp_path / "missing" or e.value.filename == str(
            tmp_path / "missing"
        )
    with pytest.raises(FileNotFoundError) as e:
        du.disk_usage(os.fsencode(tmp_path / "missing"))
    assert e.value.filename == os.fsencode(tmp_path / "missing")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        du.disk_usage(tmp_path, threads=0)
    with pytest.raises(ValueError):
        du.disk_usage(tmp_path, progress_every=0)
    with pytest.raises(TypeError):
        du.disk_usage(tmp_path, progress=3)
    with pytest.raises(TypeError):
        du.disk_usage(3)


@pytest.mark.parametrize("name", ["threads1", "threads4", "default", "reference"])
def test_unreadable_directory_raises_permission_error(public_tmp: Path, name: str) -> None:
    fn = IMPLS[name]
    top = public_tmp / "t"
    make_files(top, 20, 30)
    locked = top / "d0013" / "locked"
    (locked / "inner").mkdir(parents=True)
    os.chmod(locked, 0o000)
    with pytest.raises(PermissionError) as e:
        unprivileged(lambda: fn(top))
    assert e.value.errno == errno.EACCES
    assert e.value.filename == str(locked)
    with pytest.raises(PermissionError) as e:
        unprivileged(lambda: fn(os.fsencode(top)))
    assert e.value.filename == os.fsencode(locked)
    # listable but not searchable: the stat of an entry fails, with its path
    os.chmod(locked, 0o644)
    with pytest.raises(PermissionError) as e:
        unprivileged(lambda: fn(top))
    assert e.value.filename == str(locked / "inner")


def test_errors_leak_no_fds(public_tmp: Path) -> None:
    top = public_tmp / "t"
    make_files(top, 30, 20)
    os.chmod(top / "d0025", 0o000)

    def walks() -> int:
        before = open_fds()
        for threads in (1, 2, 4, None):
            for _ in range(5):
                with pytest.raises(PermissionError):
                    du.disk_usage(top, threads=threads)
        return open_fds() - before

    assert unprivileged(walks) == 0


# ---- the walk changes or is interrupted -------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, None])
def test_entries_deleted_during_walk(fast_tmp: Path, threads: int | None) -> None:
    top = fast_tmp / "t"
    make_files(top, 1, 20_000, b"x")  # a big flat directory: deletions land mid-scan
    make_files(top / "later", 40, 200, b"x")
    full = du.disk_usage(top)
    calls: list[int] = []

    def delete_everything(n: int, b: int) -> None:
        if not calls:
            for d in top.iterdir():
                remove_tree(d)
        calls.append(n)

    got = du.disk_usage(top, threads=threads, progress=delete_everything, progress_every=100)
    assert calls, "the walk finished before the first progress callback"
    assert not any(top.iterdir())
    assert 1 <= got[1] < full[1]
    assert got[0] <= full[0]


def test_reference_skips_deleted_entries(fast_tmp: Path) -> None:
    top = fast_tmp / "t"
    make_files(top, 1, 20_000)
    make_files(top / "later", 20, 100)
    calls: list[int] = []

    def delete_everything(n: int, b: int) -> None:
        if not calls:
            for d in top.iterdir():
                remove_tree(d)
        calls.append(n)

    got = _reference.disk_usage(top, progress=delete_everything)
    assert calls
    assert got[1] < 20_000


@pytest.mark.parametrize("threads", [1, 4, None])
def test_sigint_stops_a_large_walk(big_tree: Path, threads: int | None) -> None:
    calls: list[int] = []

    def interrupt(n: int, b: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    before = open_fds()
    with pytest.raises(KeyboardInterrupt):
        du.disk_usage(big_tree, threads=threads, progress=interrupt, progress_every=1000)
    assert len(calls) == 1
    assert calls[0] < 10_000
    assert open_fds() == before


def test_sigint_handled_between_progress_calls(big_tree: Path) -> None:
    """A handler that raises only on the second signal: PyErr_CheckSignals must see it."""
    hits: list[int] = []
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) == 2:
            raise KeyboardInterrupt

    def progress(n: int, b: int) -> None:
        calls.append(n)
        os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            du.disk_usage(big_tree, threads=1, progress=progress, progress_every=2000)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert len(hits) == 2
    assert len(calls) <= 2


def test_progress_exception_propagates(big_tree: Path) -> None:
    class Stop(Exception):
        pass

    def boom(n: int, b: int) -> None:
        raise Stop

    for threads in (1, 4):
        with pytest.raises(Stop):
            du.disk_usage(big_tree, threads=threads, progress=boom, progress_every=100)


def test_reference_keyboard_interrupt_at_any_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin, interrupted right after each os.close() in turn: the KeyboardInterrupt
    propagates as it is (closing an fd twice would raise EBADF) and no fd stays open."""
    top = tmp_path / "t"
    for p in ("a/b/c/d", "a/e", "f/g", "h"):
        (top / p).mkdir(parents=True)
        (top / p / "x").write_text("x")
    want = _reference.disk_usage(top)
    before = open_fds()

    def check(got: tuple[int, int] | None) -> None:
        assert open_fds() == before
        assert got in (None, want)  # interrupted, or the whole answer

    interrupt_each_call(monkeypatch, os, "close", lambda k: _reference.disk_usage(top), check)
