"""snapcore.du.disk_usage against GNU du, its pure-Python twin, and itself on threads.

Semantics: containerd's fs.DiskUsage (issue 3). GNU du counts hard links once
too, and with several operands (`-c`) it counts an inode seen under an earlier
operand only once, so `du -sc` is the oracle for every case below.
"""

from __future__ import annotations

import errno
import os
import shutil
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
from trees import make_chain

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
    make_chain(top, 10_000, leaf=b"x" * 5000)
    before = open_fds()
    _, inodes = check_all(top)
    assert inodes == 10_002
    assert open_fds() == before


def test_wide_and_deep_with_branches(deep_tmp: Path) -> None:
    """A comb: every level has a side directory, so the fd window must reopen frames."""
    top = deep_tmp / "comb"
    make_comb(top, 300)
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


@pytest.mark.parametrize("name", ["threads1", "threads4", "default"])
def test_with_an_errors_list_what_cannot_be_read_is_left_out_as_gnu_du_does(
    public_tmp: Path, name: str
) -> None:
    fn = IMPLS[name]
    top = public_tmp / "t"
    make_files(top, 20, 30)
    closed = top / "d0013" / "closed"  # not readable: its contents are left out
    unsearchable = top / "d0007" / "unsearchable"  # listable: its entries cannot be stat'd
    for d in (closed, unsearchable):
        (d / "inner").mkdir(parents=True)
        (d / "f").write_bytes(b"x" * 50_000)
    os.chmod(closed, 0o000)
    os.chmod(unsearchable, 0o644)

    def both() -> tuple[tuple[int, int], list[OSError], tuple[int, int]]:
        errors: list[OSError] = []
        got = fn(top, errors=errors)

        def gnu(*opts: str) -> int:  # du exits 1 here, and still prints its total
            out = subprocess.run(["du", "-s", *opts, str(top)], capture_output=True).stdout
            return int(out.split(b"\t")[0])

        return got, errors, (gnu("--block-size=512") * 512, gnu("--inodes"))

    got, errors, want = unprivileged(both)  # type: ignore[misc]
    assert got == want
    assert sorted((e.errno, e.filename) for e in errors) == sorted(
        (errno.EACCES, str(p)) for p in (closed, unsearchable / "f", unsearchable / "inner")
    )


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


# ---- mounts inside the tree (issue 10: once per distinct inode) -------------------


@pytest.fixture
def binds() -> Iterator[Callable[..., None]]:
    """mount(source, target, fstype=None): real mounts, unmounted in teardown (last first)."""
    from snapcore import mount as _sys

    done: list[Path] = []

    def mount(source: Path | str, target: Path, fstype: str | None = None) -> None:
        if fstype is None:
            _sys.mount(source, target, None, _sys.MS_BIND)
        else:
            _sys.mount(source, target, fstype, 0)
        done.append(target)

    yield mount
    for target in reversed(done):
        _sys.umount(target, _sys.MNT_DETACH)


def _layer(top: Path, name: str, nfiles: int) -> Path:
    """top/name/sub with nfiles single-link files of 5000 bytes: the bind source."""
    make_files(top / name / "sub", 2, nfiles // 2, b"s" * 5000)
    return top / name


@pytest.mark.root
@pytest.mark.parametrize("source_first", [True, False])
def test_same_fs_bind_mount_inside_the_tree_counts_once(
    tmp_path: Path, binds: Callable[..., None], source_first: bool
) -> None:
    """A directory of the tree bind-mounted inside it, on the same file system: its
    single-link files are reached twice and must count once (GNU du counts twice).

    Both orders: the walk meets the source before the bind, or the bind first
    (every inode below it was counted unhashed when the source comes later).
    """
    top = tmp_path / "t"
    # a/ is walked before z/ or after it; which one is the bind point decides the order
    src, point = ("a", "z") if source_first else ("z", "a")
    _layer(top, src, 40)
    (top / point / "mnt").mkdir(parents=True)
    (top / point / "own").write_bytes(b"o" * 3000)
    alone = du.disk_usage(top)
    mnt_inode = du.disk_usage(top / point / "mnt")
    binds(top / src, top / point / "mnt")
    # the bind hides mnt's own inode and adds nothing: every inode is there already
    want = (alone[0] - mnt_inode[0], alone[1] - 1)
    assert want[1] == 1 + 2 + 1 + 2 + 40 + 1  # top, src/, src/sub, 2 dirs, 40 files, point/
    assert du.disk_usage(top / point / "mnt") == du.disk_usage(top / src)  # the bind is there
    for name, fn in IMPLS.items():
        assert fn(top) == want, name
        assert fn(top / point, top / src) == fn(top / src, top / point), name
    assert du.disk_usage(top, apparent=True) == _reference.disk_usage(top, apparent=True)


@pytest.mark.root
def test_one_file_system_mounted_at_two_roots_counts_once(
    tmp_path: Path, binds: Callable[..., None]
) -> None:
    """A tmpfs at m1 and a bind of m1/a/sub at m2: another device, reached through two
    different mount roots (each hashed, their contents not)."""
    top = tmp_path / "t"
    for d in ("m1", "m2", "plain"):
        (top / d).mkdir(parents=True)
    make_files(top / "plain", 3, 10, b"p" * 100)
    binds("tmpfs", top / "m1", "tmpfs")
    _layer(top / "m1", "a", 30)
    (top / "m1" / "b").write_bytes(b"b" * 8000)
    before = du.disk_usage(top)
    sub = du.disk_usage(top / "m2")
    binds(top / "m1" / "a" / "sub", top / "m2")
    want = (before[0] - sub[0], before[1] - 1)
    for name, fn in IMPLS.items():
        assert fn(top) == want, name
        assert fn(top / "m2", top) == want, name


@pytest.mark.root
def test_file_bind_mounted_inside_the_tree_counts_once(
    tmp_path: Path, binds: Callable[..., None]
) -> None:
    top = tmp_path / "t"
    make_files(top, 2, 5, b"x" * 7000)
    (top / "target").write_bytes(b"")
    before = du.disk_usage(top)
    binds(top / "d0001" / "f3", top / "target")
    want = (before[0], before[1] - 1)  # target's own (empty) inode is hidden
    for name, fn in IMPLS.items():
        assert fn(top) == want, name


# ---- few file descriptors (issue 10: GNU du works with 16) --------------------------

_UNDER_LIMIT = """
import resource, sys
from snapcore import du
limit, roots = int(sys.argv[1]), sys.argv[2:]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for threads in (1, 4, None):
    print(threads, *du.disk_usage(*roots, threads=threads))
"""


def make_comb(top: Path, depth: int) -> None:
    """A chain of `depth` levels with a side directory and a file at each."""
    top.mkdir()
    fd = os.open(top, _DIR)
    try:
        for i in range(depth):
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


@pytest.mark.parametrize("limit", [16, 24, 40])
def test_low_fd_limit_degrades_instead_of_failing(
    deep_tmp: Path, big_tree: Path, limit: int
) -> None:
    """Under RLIMIT_NOFILE of 16, 24 or 40 (a fresh interpreter holds about 5), a deep
    comb and a wide tree (where helpers start; with 40, two of them) give the
    same as with no limit."""
    comb = deep_tmp / "comb"
    make_comb(comb, 400)
    for roots in ([comb], [big_tree]):
        want = du.disk_usage(*roots)
        out = subprocess.run(
            [os.sys.executable, "-c", _UNDER_LIMIT, str(limit), *map(str, roots)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        got = [tuple(map(int, line.split()[1:])) for line in out.stdout.splitlines()]
        assert got == [want] * 3, (roots, out.stdout)


_NO_FD_LEFT = """
import errno, os, resource, sys
from snapcore import du
n = len(os.listdir("/proc/self/fd")) - 1
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
try:
    du.disk_usage(sys.argv[1])
except OSError as e:
    print(e.errno == errno.EMFILE, e.filename)
"""


def test_fd_limit_too_low_for_any_walk_raises_emfile(tmp_path: Path) -> None:
    """With no fd to spare at all the walk cannot open a directory: EMFILE, with the path."""
    make_files(tmp_path / "t", 2, 2)
    out = subprocess.run(
        [os.sys.executable, "-c", _NO_FD_LEFT, str(tmp_path / "t")], capture_output=True, text=True
    )
    assert out.stdout.split() == ["True", str(tmp_path / "t")], out.stderr


# ---- a cold cache (issue 14) ------------------------------------------------------------


@pytest.fixture
def cold_tree(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A tree on its own ext4 (a loop device); calling it remounts that file system,
    so the next walk finds none of its inodes cached and waits on the device, as a
    cold cache does, without dropping the caches of the whole machine."""
    if shutil.which("mkfs.ext4") is None or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs mkfs.ext4 and loop devices")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "20000", str(image)], check=True)
    mounted = False

    def mount() -> None:
        nonlocal mounted
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        mounted = True

    def umount() -> None:
        nonlocal mounted
        subprocess.run(["umount", str(mnt)], check=True)  # the loop device goes with it
        mounted = False

    mount()
    top = mnt / "t"
    make_files(top, 40, 400)
    make_files(top / "data", 1, 50, b"c" * 5000)
    for j in range(0, 400, 5):
        os.link(top / "d0000" / f"f{j}", top / "d0039" / f"h{j}")

    def cold() -> Path:
        umount()
        mount()
        return top

    try:
        yield cold
    finally:
        if mounted:
            umount()


@pytest.mark.root
def test_cold_walk_matches_warm(cold_tree: Callable[[], Path]) -> None:
    """Cold, an adaptive walk starts workers beyond the CPUs (it sleeps on the loop
    device every few entries: measured, 16 threads); its result is the warm one."""
    top = cold_tree()
    want, want_apparent = gnu_du(top), gnu_du(top, apparent=True)
    assert want[1] == 1 + 40 + 16_000 + 2 + 50
    assert du.disk_usage(cold_tree()) == want
    assert du.disk_usage(cold_tree(), apparent=True) == want_apparent
    assert du.disk_usage(cold_tree(), threads=4) == want
    # cold, then warm in the same process: parked workers do not keep it from ending
    assert du.disk_usage(cold_tree()) == du.disk_usage(top) == want
