"""pysnap.fsutil.remove_tree: any depth, any path length, symlinks not followed."""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from interrupts import gate_opens, interrupt_each_call
from privileges import as_nobody, unprivileged
from trees import make_chain

from pysnap.fsutil import remove_tree

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def test_missing_path_is_a_noop(tmp_path: Path) -> None:
    remove_tree(tmp_path / "nope")
    remove_tree(os.fsencode(tmp_path / "nope"))


def test_file_and_symlink_roots(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(f)
    remove_tree(link)
    assert f.exists() and not link.is_symlink()
    remove_tree(f)
    assert not f.exists()


def test_symlinks_inside_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "to-dir").symlink_to(outside)
    (tree / "a" / "to-file").symlink_to(outside / "keep")
    (tree / "dangling").symlink_to(tmp_path / "nothing")
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "keep"


def test_mixed_tree_bytes_path_and_odd_names(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    b = os.fsencode(tree)
    os.mkdir(b + b"/\xff\xfe")
    with open(b + b"/\xff\xfe/new\nline", "w") as fh:
        fh.write("x")
    os.mkfifo(b + b"/fifo")
    for i in range(50):
        (tree / f"d{i % 5}" / f"e{i}").mkdir(parents=True)
        (tree / f"d{i % 5}" / f"e{i}" / "f").write_text("y")
    os.link(tree / "d0" / "e0" / "f", tree / "hard")
    remove_tree(b)
    assert not tree.exists()


def test_deep_chain(tmp_path: Path) -> None:
    # Far past shutil.rmtree's recursion and PATH_MAX (2 bytes per level).
    top = tmp_path / "deep"
    make_chain(top, 10_000)
    remove_tree(top)
    assert not top.exists()


def test_long_names_beyond_path_max(tmp_path: Path) -> None:
    top = tmp_path / "long"
    make_chain(top, 100, name="n" * 255)  # a 25,600-byte path
    remove_tree(str(top))
    assert not top.exists()


def _chown_tree(base: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), 65534, 65534)
    os.chown(base, 65534, 65534)


def _remove_unprivileged(base: Path, tree: Path) -> None:
    """remove_tree(tree) where the modes count: as uid 65534, owning ``base``, if we are root."""
    if os.geteuid() == 0:
        _chown_tree(base)
        as_nobody(lambda: remove_tree(tree))
    else:
        remove_tree(tree)
    assert not tree.exists()


def test_read_only_directories(tmp_path: Path, public_tmp: Path) -> None:
    base = public_tmp if os.geteuid() == 0 else tmp_path
    tree = base / "ro"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "g").write_text("x")
    os.chmod(tree / "a" / "b", 0o500)
    os.chmod(tree / "a", 0o000)
    _remove_unprivileged(base, tree)


def test_other_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        remove_tree(42)  # type: ignore[arg-type]


def test_unsearchable_directory_with_subdirectories(tmp_path: Path, public_tmp: Path) -> None:
    """Mode 0600: listable, but no subdirectory can be opened until the parent is searchable."""
    base = public_tmp if os.geteuid() == 0 else tmp_path
    tree = base / "ns"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    os.chmod(tree / "a" / "b", 0o600)
    os.chmod(tree / "a", 0o600)
    _remove_unprivileged(base, tree)


def test_unsearchable_empty_directory(tmp_path: Path, public_tmp: Path) -> None:
    """Mode 0600 and empty: listed at once, but ".." of it needs search permission."""
    base = public_tmp if os.geteuid() == 0 else tmp_path
    tree = base / "ne"
    (tree / "a" / "b").mkdir(parents=True)
    os.chmod(tree / "a" / "b", 0o600)
    _remove_unprivileged(base, tree)


def test_chmod_never_follows_a_symlink_swapped_in(tmp_path: Path, public_tmp: Path) -> None:
    """An unreadable directory replaced by a symlink between the failed open and the chmod:
    the symlink's target keeps its mode (the symlink is removed, the target is not touched)."""
    base = public_tmp if os.geteuid() == 0 else tmp_path
    tree = base / "sw"
    (tree / "a" / "inner").mkdir(parents=True)
    victim = base / "victim"
    victim.write_text("keep")
    os.chmod(victim, 0o600)
    os.chmod(tree / "a", 0o300)  # not readable; writable, so it can be moved away
    if os.geteuid() == 0:
        _chown_tree(base)

    def run() -> None:
        real_open = os.open

        def swapping_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            try:
                return real_open(path, flags, *args, **kw)
            except PermissionError:
                if path == b"a" and not os.path.islink(tree / "a"):
                    os.rename(tree / "a", base / "moved-away")
                    os.symlink(victim, tree / "a")
                raise

        os.open = swapping_open  # type: ignore[assignment]
        try:
            remove_tree(tree)
        finally:
            os.open = real_open

    unprivileged(run)
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert victim.read_text() == "keep"
    assert not tree.exists()


def test_keyboard_interrupt_at_any_close_neither_leaks_nor_double_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt right after each os.close() in turn: it propagates as it is
    (a second close of the same fd would raise EBADF instead) and no fd stays open."""
    before = len(os.listdir("/proc/self/fd"))

    def run(k: int) -> Path:
        tree = tmp_path / f"t{k}"
        for p in ("a/b/c/d", "a/e", "f/g"):
            (tree / p).mkdir(parents=True)
            (tree / p / "x").write_text("x")
        remove_tree(tree)
        return tree

    def check(removed: Path | None) -> None:
        assert len(os.listdir("/proc/self/fd")) == before
        assert removed is None or not removed.exists()

    interrupt_each_call(monkeypatch, os, "close", run, check)


def test_no_proc_for_the_chmod_raises_instead_of_looping(tmp_path: Path, public_tmp: Path) -> None:
    """Without /proc the no-follow chmod cannot work: that must be an error, not an
    ENOENT that the walk would take for a vanished entry (and retry forever)."""
    base = public_tmp if os.geteuid() == 0 else tmp_path
    tree = base / "np"
    (tree / "x" / "a" / "inner").mkdir(parents=True)
    os.chmod(tree / "x" / "a", 0o000)
    if os.geteuid() == 0:
        _chown_tree(base)

    def run() -> None:
        signal.alarm(10)  # a loop kills the child: the test fails instead of hanging
        real_chmod = os.chmod

        def no_proc(path: Any, *args: Any, **kw: Any) -> None:
            if isinstance(path, str) and path.startswith("/proc/"):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            real_chmod(path, *args, **kw)

        os.chmod = no_proc
        remove_tree(tree)

    with pytest.raises(OSError) as e:
        unprivileged(run)
    assert e.value.errno == errno.EOPNOTSUPP
    os.chmod(tree / "x" / "a", 0o700)


# ---- mounts inside the tree -------------------------------------------------


@pytest.mark.root
def test_never_crosses_into_a_mount(tmp_path: Path, mounted: Any) -> None:
    from snapcore import mount as sysmount

    top = tmp_path / "snap"
    (top / "fs" / "vol").mkdir(parents=True)
    (top / "fs" / "a" / "bind").mkdir(parents=True)
    (top / "fs" / "a" / "f").write_text("x")
    (top / "fs" / "plain" / "d").mkdir(parents=True)
    (top / "work").mkdir()
    mounted("tmpfs", "tmpfs", top / "fs" / "vol")
    (top / "fs" / "vol" / "data").write_text("keep")  # another file system
    elsewhere = tmp_path / "elsewhere"  # the same file system, bind-mounted
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "data").write_text("keep too")
    mounted("", str(elsewhere), top / "fs" / "a" / "bind", sysmount.MS_BIND)
    assert os.stat(elsewhere).st_dev == os.stat(top).st_dev

    with pytest.raises(OSError) as e:
        remove_tree(top)
    assert e.value.errno == errno.EBUSY
    assert e.value.filename in (str(top / "fs" / "vol"), str(top / "fs" / "a" / "bind"))
    assert "1 more" in str(e.value)
    # Nothing inside either mount was touched; everything else went.
    assert (top / "fs" / "vol" / "data").read_text() == "keep"
    assert (elsewhere / "sub" / "data").read_text() == "keep too"
    assert sorted(p.name for p in (top / "fs").iterdir()) == ["a", "vol"]
    assert os.listdir(top / "fs" / "a") == ["bind"]
    assert sorted(os.listdir(top)) == ["fs"]


@pytest.mark.root
def test_a_mount_point_itself_is_not_emptied(tmp_path: Path, mounted: Any) -> None:
    top = tmp_path / "snap"
    top.mkdir()
    mounted("tmpfs", "tmpfs", top)
    (top / "data").write_text("keep")
    with pytest.raises(OSError) as e:
        remove_tree(top)
    assert (e.value.errno, e.value.filename) == (errno.EBUSY, str(top))
    assert (top / "data").read_text() == "keep"


@pytest.mark.root
def test_a_file_bind_mount_stays(tmp_path: Path, mounted: Any) -> None:
    from snapcore import mount as sysmount

    top = tmp_path / "snap"
    (top / "d").mkdir(parents=True)
    (top / "d" / "target").write_text("")
    (top / "other").write_text("x")
    src = tmp_path / "src"
    src.write_text("keep")
    mounted("", str(src), top / "d" / "target", sysmount.MS_BIND)
    with pytest.raises(OSError) as e:
        remove_tree(top)
    assert (e.value.errno, e.value.filename) == (errno.EBUSY, str(top / "d" / "target"))
    assert (top / "d" / "target").read_text() == "keep"
    assert sorted(os.listdir(top)) == ["d"]


def test_is_mount_root(tmp_path: Path) -> None:
    from snapcore.statx import is_mount_root

    fd = os.open("/", _DIR)
    try:
        assert is_mount_root(fd, "proc") and is_mount_root(fd)
    finally:
        os.close(fd)
    fd = os.open(tmp_path, _DIR)
    try:
        (tmp_path / "d").mkdir()
        assert not is_mount_root(fd) and not is_mount_root(fd, b"d")
        with pytest.raises(FileNotFoundError):
            is_mount_root(fd, "missing")
    finally:
        os.close(fd)


# ---- the compiled walk: its errors and a real Ctrl-C --------------------------


def test_an_error_inside_names_the_full_path(public_tmp: Path) -> None:
    """An entry it may not remove: the error names its full path, the rest goes."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory the walking user does not own")
    tree = public_tmp / "err"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    (tree / "other").mkdir()
    (tree / "other" / "g").write_text("x")
    os.chown(public_tmp, 65534, 65534)
    os.chown(tree, 65534, 65534)
    os.chown(tree / "other", 65534, 65534)  # sub stays root's: nobody can neither unlink nor chmod
    with pytest.raises(PermissionError) as e:
        as_nobody(lambda: remove_tree(tree))
    assert e.value.filename == str(tree / "sub")
    assert (tree / "sub" / "f").exists()
    with pytest.raises(PermissionError) as eb:
        as_nobody(lambda: remove_tree(os.fsencode(tree)))
    assert eb.value.filename == os.fsencode(tree / "sub")


@pytest.mark.root
def test_sigint_inside_the_compiled_walk(tmp_path: Path) -> None:
    """A real SIGINT while the walk runs in C (GIL released): KeyboardInterrupt
    comes out, every fd the walk opened is closed, and a second run finishes.

    The signal is sent while the walk's own open of b/ waits on a fanotify
    permission event, so it lands inside the walk, with more than the walk's
    check interval (4096 entries) still to go in b/: no timing involved.
    """
    tree = tmp_path / "t"
    (tree / "b").mkdir(parents=True)
    for i in range(6000):
        os.mknod(tree / "b" / f"f{i}")
    main = threading.main_thread().ident
    assert main is not None
    opens: list[int] = []

    def sigint(k: int) -> None:
        opens.append(k)
        signal.pthread_kill(main, signal.SIGINT)

    before = len(os.listdir("/proc/self/fd"))
    try:
        stop = gate_opens([tree / "b"], sigint)
    except OSError as e:
        pytest.skip(str(e))
    try:
        with pytest.raises(KeyboardInterrupt):
            remove_tree(tree)
    finally:
        stop()
    assert opens == [1]
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(os.listdir(tree / "b")) > 0  # stopped inside b/
    remove_tree(tree)
    assert not tree.exists()
