"""Real mounts through pysnap.mounts: bind, rbind, overlay of 1 to 500 layers, the fallback.

Every test unmounts in its teardown; conftest checks after the run that
nothing is left mounted under the temporary directory.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountpoints import detach_all_under, mounts_at

import pysnap
from pysnap import Mount, mounted, mountinfo, unmount, unmount_all
from pysnap import mounts as pm
from pysnap.errors import InvalidArgumentError
from snapcore import mount as _sys

pytestmark = pytest.mark.root


# ---- helpers ----------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    t = tmp_path / "mnt"
    t.mkdir()
    yield t
    _teardown(t)


def _teardown(t: Path) -> None:
    detach_all_under(t)


@pytest.fixture
def long_root(tmp_path: Path) -> Path:
    """A directory whose path is over 300 bytes long."""
    root = tmp_path / ("r" * 120) / ("o" * 120) / ("t" * 60)
    root.mkdir(parents=True)
    assert len(os.fsencode(root)) > 300
    return root


@pytest.fixture
def method() -> Iterator[None]:
    """Restore the automatic overlay method after a test that forces one."""
    yield
    pm.set_overlay_method(None)


def make_chain(root: Path, n: int, *, name_len: int = 200) -> list[Path]:
    """n lower layers, top first, with long names: each has ``common`` (its index),
    ``own-i`` and ``pair-i`` (also in the layer below, so the upper copy must win),
    a whiteout of ``gone-i+1`` and an opaque ``opq`` over the layer below's."""
    layers = [root / f"layer-{i:03d}-{'x' * name_len}" for i in range(n)]
    for i, d in enumerate(layers):
        (d / "opq").mkdir(parents=True)
        (d / "common").write_text(str(i))
        (d / f"own-{i}").write_text(str(i))
        (d / f"pair-{i}").write_text(f"top {i}")
        (d / f"gone-{i}").write_text(str(i))
        (d / "opq" / f"child-{i}").write_text(str(i))
        if i > 0:
            (d / f"pair-{i - 1}").write_text(f"under {i}")
        if i + 1 < n:
            # char device 0/0 hides the layer below's file; trusted.overlay.opaque=y
            # hides the children of the layer below's opq
            os.mknod(d / f"gone-{i + 1}", stat.S_IFCHR | 0o600, os.makedev(0, 0))
            os.setxattr(d / "opq", "trusted.overlay.opaque", b"y")
    return layers


def check_chain(merged: Path, n: int) -> None:
    assert (merged / "common").read_text() == "0"
    names = set(os.listdir(merged))
    for i in range(n):
        assert (merged / f"own-{i}").read_text() == str(i)
        assert (merged / f"pair-{i}").read_text() == f"top {i}"
    assert (merged / "gone-0").read_text() == "0"
    assert not any(f"gone-{i}" in names for i in range(1, n))
    assert os.listdir(merged / "opq") == ["child-0"]


def overlay(lowers: list[Path], upper: Path | None = None, work: Path | None = None) -> Mount:
    opts = []
    if work is not None:
        opts.append(f"workdir={work}")
    if upper is not None:
        opts.append(f"upperdir={upper}")
    opts.append("lowerdir=" + ":".join(map(str, lowers)))
    opts.append("index=off")
    return Mount(type="overlay", source="overlay", options=tuple(opts))


def upper_work(root: Path) -> tuple[Path, Path]:
    upper, work = root / ("upper-" + "u" * 200), root / ("work-" + "w" * 200)
    upper.mkdir()
    work.mkdir()
    return upper, work


# ---- the package's surface ------------------------------------------------------------


def test_exports() -> None:
    for name in ("Mount", "mount_all", "unmount", "unmount_all", "mounted"):
        assert name in pysnap.__all__
        assert hasattr(pysnap, name)


def test_parse_options() -> None:
    p = pm.parse_options(["ro", "rbind", "nosuid", "rprivate", "index=off", "userxattr", "rw"])
    assert p.flags == _sys.MS_BIND | _sys.MS_REC | _sys.MS_NOSUID
    assert p.propagation == (_sys.MS_PRIVATE | _sys.MS_REC,)
    assert p.data == ("index=off", "userxattr")


# ---- bind --------------------------------------------------------------------------


def test_bind_rw(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hi")
    Mount("bind", str(src), ("rw", "rbind")).mount(str(target))
    assert (target / "f").read_text() == "hi"
    (target / "g").write_text("new")
    assert (src / "g").read_text() == "new"
    unmount(target)
    assert not mounts_at(target)


def test_bind_ro_is_read_only(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hi")
    pysnap.mount_all([Mount("bind", str(src), ("ro", "rbind"))], target)
    (_,) = mounts_at(target)
    assert os.statvfs(target).f_flag & os.ST_RDONLY
    assert (target / "f").read_text() == "hi"
    with pytest.raises(OSError) as exc:
        (target / "g").write_text("no")
    assert exc.value.errno == errno.EROFS
    unmount(target)


def test_rbind_keeps_submount_and_bind_does_not(tmp_path: Path, target: Path) -> None:
    tree, other = tmp_path / "tree", tmp_path / "other"
    (tree / "sub").mkdir(parents=True)
    other.mkdir()
    (other / "inside").write_text("submount")
    Mount("bind", str(other), ("rbind",)).mount(tree / "sub")
    try:
        Mount("bind", str(tree), ("rbind",)).mount(target)
        assert (target / "sub" / "inside").read_text() == "submount"
        assert mounts_at(target / "sub")
        _teardown(target)
        Mount("bind", str(tree), ("bind",)).mount(target)
        assert os.listdir(target / "sub") == []
        unmount(target)
    finally:
        _teardown(target)
        unmount_all(tree / "sub")


# ---- overlay by the automatic path -------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 128, 500])
def test_overlay_layers(long_root: Path, target: Path, n: int) -> None:
    layers = make_chain(long_root, n)
    upper, work = upper_work(long_root)
    m = overlay(layers, upper, work)
    if n >= 128:
        assert len(",".join(m.options)) > 4096 * 4  # far past a page
    m.mount(target)
    try:
        check_chain(target, n)
        (target / "written").write_text("up")
        assert (upper / "written").read_text() == "up"
        os.unlink(target / "own-0")
        assert stat.S_ISCHR(os.lstat(upper / "own-0").st_mode)  # a whiteout in the upper
        assert len(mounts_at(target)) == 1
    finally:
        unmount(target)
    assert not mounts_at(target)


def test_overlay_read_only_view(long_root: Path, target: Path) -> None:
    layers = make_chain(long_root, 130)
    Mount("overlay", "overlay", ("lowerdir=" + ":".join(map(str, layers)), "ro")).mount(target)
    try:
        check_chain(target, 130)
        with pytest.raises(OSError) as exc:
            (target / "x").write_text("no")
        assert exc.value.errno == errno.EROFS
    finally:
        unmount(target)


def test_overlay_501_layers_fails_clearly(long_root: Path, target: Path) -> None:
    layers = make_chain(long_root, 501, name_len=20)
    with pytest.raises(OSError) as exc:
        overlay(layers).mount(target)
    assert exc.value.errno == errno.EINVAL
    notes = "\n".join(exc.value.__notes__)
    assert "at most 500 lower layers; this mount has 501" in notes
    assert os.fspath(exc.value.filename2) == str(target)
    assert not mounts_at(target)


# ---- the fallback: relative paths from a helper thread -------------------------------------


def snapshot_chain(root: Path, ids: range) -> tuple[list[Path], Path, Path]:
    """Committed snapshots ``snapshots/<id>/fs`` (top = last id) and an active one above."""
    snaps = root / "snapshots"
    layers = []
    for k, i in enumerate(ids):
        fs = snaps / str(i) / "fs"
        fs.mkdir(parents=True)
        (fs / "common").write_text(str(i))
        (fs / f"own-{i}").write_text(str(k))
        layers.append(fs)
    active = snaps / str(ids[-1] + 1)
    (active / "fs").mkdir(parents=True)
    (active / "work").mkdir()
    return layers[::-1], active / "fs", active / "work"


@pytest.mark.parametrize("n", [1, 2, 128])
def test_fallback_relative(long_root: Path, target: Path, method: None, n: int) -> None:
    pm.set_overlay_method("relative")
    lowers, upper, work = snapshot_chain(long_root, range(1, n + 1))
    cwd = os.getcwd()
    overlay(lowers, upper, work).mount(target)
    try:
        assert os.getcwd() == cwd
        (entry,) = mounts_at(target)
        assert (entry.option("lowerdir") or "").split(":")[0] == f"{n}/fs"  # relative
        assert (target / "common").read_text() == str(n)
        assert sorted(os.listdir(target)) == sorted(
            ["common", *(f"own-{i}" for i in range(1, n + 1))]
        )
        (target / "w").write_text("x")
        assert (upper / "w").read_text() == "x"
    finally:
        unmount(target)


@pytest.mark.parametrize("forced", ["relative", "legacy"])
def test_fallback_too_long_for_a_page(
    long_root: Path, target: Path, method: None, forced: pm.OverlayMethod
) -> None:
    pm.set_overlay_method(forced)
    # ids that have grown to 7 digits: "1000123/fs:" * 450 is still past a page
    lowers, upper, work = snapshot_chain(long_root, range(1_000_000, 1_000_450))
    with pytest.raises(InvalidArgumentError, match=r"450 layers need \d+ bytes.*6\.8"):
        overlay(lowers, upper, work).mount(target)
    assert not mounts_at(target)


@pytest.mark.parametrize("forced", ["relative", "fd"])
def test_threads_mount_in_the_right_place(
    tmp_path: Path, method: None, forced: pm.OverlayMethod
) -> None:
    pm.set_overlay_method(forced)
    n_threads, rounds = 8, 15
    chains = []
    for t in range(n_threads):
        root = tmp_path / f"t{t}"
        lowers, upper, work = snapshot_chain(root, range(1, 4))
        (lowers[-1] / "whoami").write_text(str(t))
        tgt = root / "mnt"
        tgt.mkdir()
        chains.append((overlay(lowers, upper, work), tgt))
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        m, tgt = chains[t]
        try:
            barrier.wait()
            for _ in range(rounds):
                m.mount(tgt)
                try:
                    assert (tgt / "whoami").read_text() == str(t)
                    assert len(mounts_at(tgt)) == 1
                finally:
                    unmount(tgt)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for _, tgt in chains:
        _teardown(tgt)
    assert not errors, errors
    assert not mountinfo.mounts_under(tmp_path)


# ---- the new API with fds, forced -----------------------------------------------------------


def test_fd_path_with_options(long_root: Path, target: Path, method: None) -> None:
    pm.set_overlay_method("fd")
    layers = make_chain(long_root, 3)
    upper, work = upper_work(long_root)
    m = overlay(layers, upper, work)
    Mount(m.type, m.source, (*m.options, "nosuid", "nodev", "private")).mount(target)
    try:
        check_chain(target, 3)
        (_,) = mounts_at(target)
        flags = os.statvfs(target).f_flag  # the per-mount flags
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    finally:
        unmount(target)


# ---- bad input ---------------------------------------------------------------------------


def test_unknown_type(tmp_path: Path, target: Path) -> None:
    with pytest.raises(OSError) as exc:
        Mount("nosuchfs", "none", ()).mount(target)
    assert exc.value.errno == errno.ENODEV
    assert (exc.value.filename, os.fspath(exc.value.filename2)) == ("none", str(target))
    assert not mounts_at(target)


def test_missing_source(tmp_path: Path, target: Path) -> None:
    src = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as exc:
        Mount("bind", src, ("ro", "rbind")).mount(target)
    assert (exc.value.filename, os.fspath(exc.value.filename2)) == (src, str(target))
    assert any("mounting -t bind" in n for n in exc.value.__notes__)
    assert not mounts_at(target)


def test_missing_target(tmp_path: Path) -> None:
    tgt = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as exc:
        Mount("bind", str(tmp_path), ("rbind",)).mount(tgt)
    assert (exc.value.filename, exc.value.filename2) == (str(tmp_path), tgt)
    assert not mountinfo.mounts_under(tmp_path)


def test_embedded_nul_is_refused(tmp_path: Path, target: Path, method: None) -> None:
    # a C string ends at the first NUL: "<target>\0..." must not act on <target>
    src, bad = str(tmp_path), str(target) + "\0/elsewhere"
    fd = _sys.FSCONFIG_SET_FD
    calls = [
        lambda: _sys.mount(src, bad, None, _sys.MS_BIND),
        lambda: _sys.mount(src + "\0x", str(target), None, _sys.MS_BIND),
        lambda: _sys.mount("none", str(target), "tmpfs", 0, "size=1m\0,nosuchopt"),
        lambda: _sys.umount(bad),
        lambda: _sys.open_path(src + "\0x"),
        lambda: _sys.fsopen("tmpfs\0x"),
        lambda: _sys.move_mount(-1, "", _sys.AT_FDCWD, bad, _sys.MOVE_MOUNT_F_EMPTY_PATH),
        lambda: _sys.fsmount_params("tmpfs", bad, []),
        lambda: _sys.fsmount_params("overlay", str(target), [(fd, "lowerdir+", src + "\0x")]),
        lambda: _sys.mount_in_dir(src, "none", bad, "tmpfs"),
        lambda: _sys.mount_in_dir(src + "\0x", "none", str(target), "tmpfs"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="null byte"):
            call()
        assert not mounts_at(target)


@pytest.mark.parametrize("n", [2, 200])  # mount(2), then the new API (with the kernel's message)
def test_option_the_kernel_rejects(long_root: Path, target: Path, n: int) -> None:
    layers = make_chain(long_root, n, name_len=30)
    m = overlay(layers)
    with pytest.raises(OSError) as exc:
        Mount(m.type, m.source, (*m.options, "nosuchoption=1")).mount(target)
    assert exc.value.errno == errno.EINVAL
    assert os.fspath(exc.value.filename2) == str(target)
    if n > 2:
        assert any("nosuchoption" in note for note in exc.value.__notes__)
    assert not mounts_at(target)


def test_missing_layer_by_fd(long_root: Path, target: Path) -> None:
    layers = make_chain(long_root, 150, name_len=30)
    missing = long_root / "missing-layer"
    with pytest.raises(FileNotFoundError) as exc:
        overlay([*layers[:100], missing, *layers[100:]]).mount(target)
    assert exc.value.filename == str(missing)
    assert os.fspath(exc.value.filename2) == str(target)
    assert not mounts_at(target)


@pytest.mark.parametrize("options", [("rbind", "ro"), ("rbind", "rprivate")])
def test_failed_second_step_leaves_nothing(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...]
) -> None:
    """The bind succeeds, the ro remount or the propagation call after it fails."""
    src = tmp_path / "src"
    src.mkdir()
    real = _sys.mount
    calls: list[int] = []

    def second_fails(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EPERM, "injected", args[0], None, args[1])
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_sys, "mount", second_fails)
    with pytest.raises(PermissionError):
        pm.mount_one(Mount("bind", str(src), options), target)
    assert len(calls) == 2
    assert not mounts_at(target)


def test_mount_all_is_all_or_nothing(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(OSError):
        pysnap.mount_all(
            [Mount("bind", str(src), ("rbind",)), Mount("nosuchfs", "none", ())], target
        )
    assert not mounts_at(target)


# ---- unmount and mounted() -----------------------------------------------------------------


def test_unmount_policy(tmp_path: Path, target: Path) -> None:
    with pytest.raises(OSError) as exc:
        unmount(target)
    assert exc.value.errno == errno.EINVAL
    unmount_all(target)  # nothing mounted: returns cleanly
    src = tmp_path / "src"
    src.mkdir()
    for _ in range(3):
        Mount("bind", str(src), ("rbind",)).mount(target)
    assert len(mounts_at(target)) == 3
    unmount_all(target)
    assert not mounts_at(target)
    Mount("bind", str(src), ("rbind",)).mount(target)
    fd = os.open(target / ".", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            unmount(target)  # busy after its retries
        assert exc.value.errno == errno.EBUSY
        unmount(target, detach=True)
    finally:
        os.close(fd)
    assert not mounts_at(target)


def test_mounted_cleans_up_on_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    seen = ""
    with pytest.raises(KeyError), mounted([Mount("bind", str(src), ("ro", "rbind"))]) as where:
        seen = where
        assert Path(where, "f").read_text() == "x"
        raise KeyError("body")
    assert seen and not os.path.exists(seen)
    assert not mounts_at(seen)


def test_mounted_cleans_up_when_the_mount_fails(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    with (
        pytest.raises(FileNotFoundError),
        mounted([Mount("bind", str(tmp_path / "missing"), ("rbind",))], dir=tmp_path),
    ):
        pytest.fail("not reached")
    assert set(os.listdir(tmp_path)) == before


def test_mounted_overlay(long_root: Path) -> None:
    layers = make_chain(long_root, 300, name_len=50)
    with mounted([overlay(layers)], dir=long_root) as where:
        check_chain(Path(where), 300)
    assert not os.path.exists(where)


# ---- the target: one behaviour on every path (issue 10 item 11) -----------------------------


@pytest.mark.parametrize("forced", ["legacy", "fd", "relative"])
def test_symlinked_target_is_followed(
    long_root: Path, tmp_path: Path, target: Path, method: None, forced: str
) -> None:
    # as mount(8) and containerd's mount.All (mount(2) follows the link):
    # the overlay lands on the link's destination, never on the link
    pm.set_overlay_method(forced)
    layers = make_chain(long_root, 3, name_len=30)
    link = tmp_path / "link"
    link.symlink_to(target)
    overlay(layers).mount(link)
    assert len(mounts_at(target)) == 1
    check_chain(target, 3)
    assert link.is_symlink()


@pytest.mark.parametrize("forced", ["legacy", "fd", "relative"])
@pytest.mark.parametrize("kind", ["file", "link-to-file", "dangling-link"])
def test_target_that_is_not_a_directory(
    long_root: Path, tmp_path: Path, method: None, forced: str, kind: str
) -> None:
    pm.set_overlay_method(forced)
    layers = make_chain(long_root, 3, name_len=30)
    file = tmp_path / "file"
    file.write_text("keep")
    tgt = {"file": file, "link-to-file": tmp_path / "l1", "dangling-link": tmp_path / "l2"}[kind]
    if kind == "link-to-file":
        tgt.symlink_to(file)
    elif kind == "dangling-link":
        tgt.symlink_to(tmp_path / "nowhere")
    expected = FileNotFoundError if kind == "dangling-link" else NotADirectoryError
    with pytest.raises(expected) as exc:
        overlay(layers).mount(tgt)
    assert (exc.value.filename, os.fspath(exc.value.filename2)) == ("overlay", str(tgt))
    assert not mountinfo.mounts_under(tmp_path)
    assert file.read_text() == "keep"


def test_kernel_probes_match_the_running_kernel() -> None:
    from pysnap import kernel

    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    assert kernel.has_new_mount_api() == (release >= (5, 2))
    assert kernel.overlay_takes_lowerdir_fd() == (release >= (6, 8))
    assert kernel.overlay_has_index() == (release >= (4, 13))
