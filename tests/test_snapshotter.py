"""The behaviours containerd's snapshot testsuite checks, on real mounts.

Every test that takes ``sn`` or ``open_sn`` (served.py) runs twice, as uvloop runs one
suite on two loops: on an OverlaySnapshotter in process ("local"), and on a
RemoteSnapshotter talking to ``pysnap serve``'s service over a unix socket
("remote"). Tests of options the server does not pass, of reopening and of
crashes stay in process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from trees import make_chain, tree_state

from pysnap import Info, Kind, Mount, OverlaySnapshotter, Usage, mounted
from pysnap.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pysnap.fsutil import remove_tree
from pysnap.overlay import UPPERDIR_LABEL

if TYPE_CHECKING:
    from typing_extensions import Buffer

Applier = Callable[[Path], None]


@pytest.fixture
def sn(open_sn: Callable[..., OverlaySnapshotter], tmp_path: Path) -> OverlaySnapshotter:
    return open_sn(tmp_path / "root", sync=False)


# -- helpers -----------------------------------------------------------------


def write(path: Path, data: str, mode: int = 0o644) -> None:
    path.write_text(data)
    os.chmod(path, mode)


def apply_layer(sn: OverlaySnapshotter, key: str, parent: str, applier: Applier) -> None:
    """prepare key on parent, mount it, apply, unmount, commit as key-c."""
    mounts = sn.prepare(key, parent)
    with mounted(mounts) as target:
        applier(Path(target))
    sn.commit(f"{key}-c", key)


def check_chain(sn: OverlaySnapshotter, flat: Path, appliers: list[Applier]) -> None:
    """Apply each layer to a snapshot chain and to a flat dir; views must equal the flat dir."""
    flat.mkdir(mode=0o755, exist_ok=True)
    os.chmod(flat, 0o755)
    parent = ""
    for n, applier in enumerate(appliers):
        applier(flat)
        apply_layer(sn, f"l{n}", parent, applier)
        parent = f"l{n}-c"
        with mounted(sn.view(f"v{n}", parent)) as target:
            assert tree_state(Path(target), times=False) == tree_state(flat, times=False), (
                f"layer {n}"
            )
        sn.remove(f"v{n}")


def store_state(sn: OverlaySnapshotter) -> tuple[list[Info], list[str]]:
    infos = sorted(sn.walk(), key=lambda i: i.name)
    return infos, sorted(os.listdir(os.path.join(sn.root, "snapshots")))


# -- basics --------------------------------------------------------------------


@pytest.mark.root
def test_prepare_write_commit_child_view_remove(sn: OverlaySnapshotter) -> None:
    mounts = sn.prepare("build-1")
    with mounted(mounts) as target:
        write(Path(target) / "a", "one")
        os.mkdir(Path(target) / "d")
        write(Path(target) / "d" / "b", "two")
    sn.commit("layer-1", "build-1")

    info = sn.stat("layer-1")
    assert (info.kind, info.name, info.parent) == (Kind.COMMITTED, "layer-1", "")
    with pytest.raises(NotFoundError):
        sn.stat("build-1")

    with mounted(sn.prepare("build-2", "layer-1")) as target:
        assert (Path(target) / "d" / "b").read_text() == "two"
        write(Path(target) / "c", "three")
    sn.commit("layer-2", "build-2")
    assert sn.stat("layer-2").parent == "layer-1"

    with mounted(sn.view("ro", "layer-2")) as target:
        assert sorted(os.listdir(target)) == ["a", "c", "d"]

    with pytest.raises(FailedPreconditionError, match="cannot remove"):
        sn.remove("layer-1")
    sn.remove("ro")
    sn.remove("layer-2")
    sn.remove("layer-1")
    assert sn.walk() == []
    assert os.listdir(os.path.join(sn.root, "snapshots")) == []


def test_stat_active_and_committed_and_chain(sn: OverlaySnapshotter) -> None:
    sn.prepare("a", labels={"x": "1"})
    a = sn.stat("a")
    assert (a.kind, a.name, a.parent, a.labels) == (Kind.ACTIVE, "a", "", {"x": "1"})
    assert a.created == a.updated
    assert a.created.tzinfo is not None
    assert abs(a.created - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    sn.commit("c1", "a", labels={"y": "2"})
    c1 = sn.stat("c1")
    assert (c1.kind, c1.labels) == (Kind.COMMITTED, {"y": "2"})
    sn.prepare("b", "c1")
    sn.commit("c2", "b")
    sn.view("v", "c2")
    assert [sn.stat(k).parent for k in ("c1", "c2", "v")] == ["", "c1", "c2"]
    assert sn.stat("v").kind == Kind.VIEW


@pytest.mark.parametrize("first", ["prepare", "view", "committed"])
@pytest.mark.parametrize("second", ["prepare", "view", "commit"])
def test_duplicate_keys(sn: OverlaySnapshotter, first: str, second: str) -> None:
    sn.prepare("base")
    sn.commit("p", "base")
    if first == "committed":
        sn.prepare("tmp", "p")
        sn.commit("dup", "tmp")
    else:
        getattr(sn, first)("dup", "p")
    before = store_state(sn)
    with pytest.raises(AlreadyExistsError):
        if second == "commit":
            sn.prepare("other", "p")
            before = store_state(sn)
            sn.commit("dup", "other")
        else:
            getattr(sn, second)("dup", "p")
    assert store_state(sn) == before


def test_removed_key_and_name_are_reusable(sn: OverlaySnapshotter) -> None:
    sn.prepare("k")
    first = sn.stat("k")
    sn.remove("k")
    sn.prepare("k")
    sn.commit("n", "k")
    sn.remove("n")
    sn.prepare("k")
    sn.commit("n", "k")
    assert sn.stat("n").kind == Kind.COMMITTED
    assert sn.stat("n").created_ns >= first.created_ns


def test_commit_error_order(sn: OverlaySnapshotter) -> None:
    sn.prepare("a")
    sn.commit("taken", "a")
    sn.view("v", "taken")
    with pytest.raises(NotFoundError):
        sn.commit("x", "missing")
    with pytest.raises(AlreadyExistsError):
        sn.commit("taken", "v")  # name taken beats "not active"
    with pytest.raises(FailedPreconditionError):
        sn.commit("x", "v")
    with pytest.raises(FailedPreconditionError):
        sn.commit("x", "taken")


def test_commit_with_parent_rebases_a_parentless_snapshot(sn: OverlaySnapshotter) -> None:
    # containerd 2.2's storage rules (bolt.go CommitActive), for parallel unpack
    sn.prepare("base")
    sn.commit("p", "base")
    sn.prepare("other")
    sn.commit("q", "other")
    sn.prepare("layer")  # prepared without a parent
    sn.prepare("child", "p")
    sn.prepare("not-committed")
    before = store_state(sn)
    for kind, parent in (
        (InvalidArgumentError, "q"),  # child's parent is p: "cannot change parent"
        (NotFoundError, "missing"),
        (FailedPreconditionError, "not-committed"),
    ):
        key = "child" if kind is InvalidArgumentError else "layer"
        with pytest.raises(kind, match="cannot change parent" if key == "child" else None):
            sn.commit("c", key, parent=parent)
        assert store_state(sn) == before
    sn.commit("c", "layer", parent="p")
    sn.commit("c2", "child", parent="p")  # the parent it has already: accepted
    assert (sn.stat("c").parent, sn.stat("c2").parent) == ("p", "p")
    with pytest.raises(FailedPreconditionError, match="cannot remove"):
        sn.remove("p")  # the rebased snapshot is a child of p
    (mount,) = sn.view("v", "c")
    snaps = os.path.join(sn.root, "snapshots")
    assert f"lowerdir={snaps}/3/fs:{snaps}/1/fs" in mount.options  # c's layer, then p's
    for key in ("v", "c", "c2"):
        sn.remove(key)
    sn.remove("p")


def test_commit_stores_usage_and_usage_kinds(sn: OverlaySnapshotter) -> None:
    sn.prepare("a")
    upper = Path(sn.root, "snapshots", "1", "fs")
    (upper / "f").write_bytes(b"x" * 10000)
    os.link(upper / "f", upper / "g")
    active = sn.usage("a")
    assert isinstance(active, Usage)
    assert active.inodes == 2  # fs itself and f (g is the same inode)
    seen: list[tuple[int, int]] = []
    assert sn.usage("a", progress=lambda e, b: seen.append((e, b))) == active
    sn.commit("c", "a")
    assert sn.usage("c") == active
    (upper / "late").write_bytes(b"y" * 8192)  # committed usage is the stored figure
    assert sn.usage("c") == active
    sn.view("v", "c")
    assert sn.usage("v") == Usage(0, 0)


# -- update and labels ---------------------------------------------------------


def test_update_rules(sn: OverlaySnapshotter) -> None:
    sn.prepare("a", labels={"l1": "v1", "l2": "v2", "l3": "v3", "empty": ""})
    created = sn.stat("a")
    assert created.created == created.updated
    assert "empty" not in created.labels

    time.sleep(0.001)
    new = sn.update(Info(kind=Kind.VIEW, name="a", parent="bogus", labels={"l1": "x"}))
    assert new.labels == {"l1": "x"}
    assert (new.kind, new.parent, new.created) == (Kind.ACTIVE, "", created.created)
    assert new.updated_ns > created.updated_ns
    assert sn.stat("a") == new

    sn.update(Info(name="a", labels={"l1": "v1", "l2": "v2", "l3": "v3"}), "labels")
    new = sn.update(Info(name="a", labels={"l1": "new", "l4": "x"}), "labels.l1", "labels.l2")
    assert new.labels == {"l1": "new", "l3": "v3"}

    with pytest.raises(InvalidArgumentError):
        sn.update(Info(name="a", parent="x"), "parent")
    assert sn.stat("a") == new
    with pytest.raises(NotFoundError):
        sn.update(Info(name="missing"))


def test_labels_limits(sn: OverlaySnapshotter) -> None:
    with pytest.raises(InvalidArgumentError):
        sn.prepare("a", labels={"k": "v" * 4096})
    with pytest.raises(InvalidArgumentError):
        sn.prepare("a", labels={"": "v"})
    sn.prepare("a", labels={"k": "v" * 4095})
    assert store_state(sn)[1] == ["1"]


def test_upperdir_label(open_sn: Callable[..., OverlaySnapshotter], tmp_path: Path) -> None:
    with contextlib.closing(open_sn(tmp_path / "r", sync=False, upperdir_label=True)) as s:
        s.prepare("a", labels={"x": "y"})
        upper = os.path.join(s.root, "snapshots", "1", "fs")
        assert s.stat("a").labels == {"x": "y", UPPERDIR_LABEL: upper}
        assert s.walk()[0].labels[UPPERDIR_LABEL] == upper
        assert s.update(Info(name="a", labels={}), "labels").labels == {UPPERDIR_LABEL: upper}
        s.update(s.stat("a").replace(labels={**s.stat("a").labels, "z": "1"}))
    with OverlaySnapshotter(tmp_path / "r", sync=False) as s:
        assert s.stat("a").labels == {"z": "1"}  # the upperdir label is never stored


# -- walk ----------------------------------------------------------------------


def test_walk_filters(sn: OverlaySnapshotter) -> None:
    sn.prepare("base", labels={"a.b": "1", "team": "x"})
    sn.commit("c1", "base", labels={"a.b": "1", "team": "x"})
    sn.prepare("work", "c1", labels={"team": "y"})
    sn.view("v", "c1", labels={"other": "z"})

    def names(*filters: str) -> list[str]:
        return sorted(i.name for i in sn.walk(*filters))

    assert names() == ["c1", "v", "work"]
    assert names("kind==committed") == ["c1"]
    assert names("kind==active", "kind==view") == ["v", "work"]
    assert names("parent==c1") == ["v", "work"]
    assert names("parent==c1,labels.team==y") == ["work"]
    assert names('labels."a.b"==1') == names("labels.a.b==1") == ["c1"]
    assert names("labels.team!=x") == ["v", "work"]  # absent counts as !=
    assert names("name~=^w") == ["work"]
    assert names("name~=or") == ["work"]  # unanchored
    assert names("name~=[") == []  # does not compile: matches nothing
    assert names("labels.other") == ["v"]
    assert names("parent") == ["c1", "v", "work"]
    with pytest.raises(InvalidArgumentError):
        sn.walk("kind==")
    for info in sn.walk():
        assert sn.stat(info.name) == info


# -- mount layouts -------------------------------------------------------------


def test_mount_layouts(open_sn: Callable[..., OverlaySnapshotter], tmp_path: Path) -> None:
    s = open_sn(tmp_path / "r", sync=False, mount_options=("index=on",))
    snaps = os.path.join(s.root, "snapshots")
    assert s.prepare("a") == [Mount("bind", f"{snaps}/1/fs", ("rw", "rbind"))]
    assert s.view("va") == [Mount("bind", f"{snaps}/2/fs", ("ro", "rbind"))]
    s.commit("c1", "a")
    assert s.view("v1", "c1") == [Mount("bind", f"{snaps}/1/fs", ("ro", "rbind"))]
    assert s.prepare("b", "c1") == [
        Mount(
            "overlay",
            "overlay",
            (
                f"workdir={snaps}/4/work",
                f"upperdir={snaps}/4/fs",
                f"lowerdir={snaps}/1/fs",
                "index=on",
            ),
        )
    ]
    s.commit("c2", "b")
    view_mounts = s.view("v2", "c2")
    assert view_mounts == [
        Mount("overlay", "overlay", (f"lowerdir={snaps}/4/fs:{snaps}/1/fs", "index=on"))
    ]
    assert s.mounts("v2") == view_mounts  # mounts() later gives what view() gave
    with pytest.raises(FailedPreconditionError):
        s.mounts("c2")
    with pytest.raises(NotFoundError):
        s.mounts("nope")


def test_index_off_added_when_kernel_has_it(sn: OverlaySnapshotter) -> None:
    sn.prepare("a")
    sn.commit("c", "a")
    opts = sn.prepare("b", "c")[0].options
    has_index = os.path.exists("/sys/module/overlay/parameters/index")
    assert ("index=off" in opts) == has_index


def test_directory_modes_whatever_the_umask(sn: OverlaySnapshotter) -> None:
    old = os.umask(0o077)
    try:
        sn.prepare("a")
    finally:
        os.umask(old)
    d = Path(sn.root, "snapshots", "1")
    assert stat.S_IMODE(os.stat(d / "fs").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(d / "work").st_mode) == 0o711
    assert stat.S_IMODE(os.stat(sn.root).st_mode) == 0o700


def test_fs_owned_like_parent(sn: OverlaySnapshotter) -> None:
    sn.prepare("a")
    os.chown(Path(sn.root, "snapshots", "1", "fs"), 1234, 5678)
    sn.commit("c", "a")
    sn.prepare("b", "c")
    st = os.stat(Path(sn.root, "snapshots", "2", "fs"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_diff_to_a_writer_that_keeps_its_pieces(tmp_path: Path) -> None:
    """diff lends its own buffers to the writer: one the writer keeps is never refilled."""

    class Keeper(io.RawIOBase):
        def __init__(self) -> None:
            self.pieces: list[memoryview] = []

        def writable(self) -> bool:
            return True

        def write(self, piece: Buffer) -> int:
            self.pieces.append(memoryview(piece))
            return len(self.pieces[-1])

    with OverlaySnapshotter(tmp_path / "root", sync=False, upperdir_label=True) as sn:
        sn.prepare("k")
        upper = Path(sn.stat("k").labels[UPPERDIR_LABEL])
        for i in range(12):  # more pieces than the walk keeps spare buffers
            (upper / f"f{i:02}").write_bytes(os.urandom(1 << 20))
        kept, copied = Keeper(), io.BytesIO()
        layer = sn.diff("k", kept, compression=None)
        assert sn.diff("k", copied, compression=None) == layer
    blob = b"".join(kept.pieces)
    assert len(kept.pieces) > 12 and all(p.readonly for p in kept.pieces)
    assert blob == copied.getvalue()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_diff_to_a_writer_that_fails(tmp_path: Path, compression: str | None) -> None:
    """A write that fails (a full disk) ends the diff with its error; the walk and the hash
    stop, and the snapshot diffs again afterwards."""

    class Full(io.RawIOBase):
        def __init__(self) -> None:
            self.taken = 0

        def writable(self) -> bool:
            return True

        def write(self, piece: Buffer) -> int:
            if self.taken >= 2 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.taken += len(memoryview(piece))
            return len(memoryview(piece))

    with OverlaySnapshotter(tmp_path / "root", sync=False, upperdir_label=True) as sn:
        sn.prepare("k")
        upper = Path(sn.stat("k").labels[UPPERDIR_LABEL])
        for i in range(12):
            (upper / f"f{i:02}").write_bytes(os.urandom(1 << 20))
        with pytest.raises(OSError) as e:
            sn.diff("k", Full(), compression=compression)
        assert e.value.errno == errno.ENOSPC
        assert sn.diff("k", io.BytesIO(), compression=compression).entries == 12


def test_root_with_separator_refused(tmp_path: Path) -> None:
    for bad in ("a,b", "a:b"):
        with pytest.raises(InvalidArgumentError):
            OverlaySnapshotter(tmp_path / bad)
        assert not (tmp_path / bad).exists()


def test_close_twice(tmp_path: Path) -> None:
    s = OverlaySnapshotter(tmp_path / "r")
    s.close()
    s.close()


# -- file semantics across layers (each against a flat directory) -------------


def _update_file(rounds: int) -> list[Applier]:
    def layer(n: int) -> Applier:
        def apply(root: Path) -> None:
            write(root / "file", f"round {n}" * (n + 1), 0o600 + n)
            write(root / f"extra-{n}", str(n))

        return apply

    return [layer(n) for n in range(rounds)]


def _remove_and_recreate_dir() -> list[Applier]:
    def base(root: Path) -> None:
        (root / "d").mkdir()
        write(root / "d" / "old1", "1")
        write(root / "d" / "old2", "2")

    def recreate(root: Path) -> None:
        remove_tree(root / "d")
        (root / "d").mkdir()
        write(root / "d" / "new", "3")

    return [base, recreate]


def _chown_only() -> list[Applier]:
    def base(root: Path) -> None:
        write(root / "f", "data")
        (root / "d").mkdir()

    def chown(root: Path) -> None:
        os.chown(root / "f", 1000, 1000)
        os.chown(root / "d", 2000, 2000)

    return [base, chown]


def _dir_ownership_three_layers() -> list[Applier]:
    def l1(root: Path) -> None:
        (root / "a" / "b").mkdir(parents=True)
        os.chown(root / "a", 10, 10)

    def l2(root: Path) -> None:
        os.chown(root / "a" / "b", 20, 20)
        write(root / "a" / "b" / "f", "x")

    def l3(root: Path) -> None:
        os.chown(root / "a", 30, 30)
        (root / "a" / "c").mkdir()

    return [l1, l2, l3]


def _delete_stays_deleted() -> list[Applier]:
    def l1(root: Path) -> None:
        write(root / "gone", "x")
        write(root / "kept", "y")

    def l2(root: Path) -> None:
        os.unlink(root / "gone")

    def l3(root: Path) -> None:
        write(root / "kept", "z")

    return [l1, l2, l3]


def _hardlink_then_remove_original() -> list[Applier]:
    def l1(root: Path) -> None:
        write(root / "orig", "shared content")

    def l2(root: Path) -> None:
        os.link(root / "orig", root / "link")

    def l3(root: Path) -> None:
        os.unlink(root / "orig")

    return [l1, l2, l3]


def _renames() -> list[Applier]:
    def l1(root: Path) -> None:
        write(root / "a", "A")
        write(root / "b", "B")
        (root / "dir").mkdir()
        write(root / "dir" / "x", "X")

    def l2(root: Path) -> None:
        os.rename(root / "a", root / "a2")
        os.replace(root / "b", root / "a2")
        os.symlink("a2", root / "sym")

    def l3(root: Path) -> None:
        write(root / "tmp", "T")
        os.replace(root / "tmp", root / "dir" / "x")  # overwrite by rename

    return [l1, l2, l3]


LAYER_CASES = {
    "update-file": _update_file(4),
    "remove-recreate-dir": _remove_and_recreate_dir(),
    "chown-only": _chown_only(),
    "dir-ownership-3": _dir_ownership_three_layers(),
    "delete-stays-deleted": _delete_stays_deleted(),
    "hardlink-remove-original": _hardlink_then_remove_original(),
    "renames": _renames(),
}


@pytest.mark.root
@pytest.mark.parametrize("case", LAYER_CASES)
def test_layers_equal_flat(sn: OverlaySnapshotter, tmp_path: Path, case: str) -> None:
    check_chain(sn, tmp_path / "flat", LAYER_CASES[case])


@pytest.mark.root
def test_128_layers_equal_flat_at_every_step(sn: OverlaySnapshotter, tmp_path: Path) -> None:
    def layer(n: int) -> Applier:
        def apply(root: Path) -> None:
            write(root / f"f{n % 17}", f"layer {n}")
            if n % 5 == 4:
                os.unlink(root / f"f{(n - 1) % 17}")
            (root / f"dir{n % 3}").mkdir(exist_ok=True)

        return apply

    check_chain(sn, tmp_path / "flat", [layer(n) for n in range(128)])


@pytest.mark.root
def test_mounted_view_is_read_only_and_root_is_0755(sn: OverlaySnapshotter) -> None:
    old = os.umask(0o077)
    try:
        with mounted(sn.prepare("a")) as target:
            assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
            write(Path(target) / "f", "x")
    finally:
        os.umask(old)
    sn.commit("c", "a")
    sn.prepare("b", "c")
    sn.commit("c2", "b")
    for key, parent in (("v1", "c"), ("v2", "c2")):  # ro bind and ro overlay
        with mounted(sn.view(key, parent)) as target:
            with pytest.raises(OSError) as e:
                write(Path(target) / "new", "y")
            assert e.value.errno == errno.EROFS


# -- bad input changes nothing ---------------------------------------------------


def test_bad_input_changes_nothing(sn: OverlaySnapshotter) -> None:
    sn.prepare("a")
    sn.commit("c", "a")
    sn.prepare("act", "c")
    sn.view("v", "c")
    before = store_state(sn)
    cases: list[tuple[type[Exception], Callable[[], object]]] = [
        (InvalidArgumentError, lambda: sn.prepare("")),
        (InvalidArgumentError, lambda: sn.prepare("x" * 512)),
        (InvalidArgumentError, lambda: sn.prepare("a\0b")),
        (InvalidArgumentError, lambda: sn.view("\udcff")),
        (InvalidArgumentError, lambda: sn.stat("")),
        (InvalidArgumentError, lambda: sn.stat("x" * 512)),
        (InvalidArgumentError, lambda: sn.stat("a\0b")),
        (InvalidArgumentError, lambda: sn.stat("\udcff")),
        (NotFoundError, lambda: sn.stat("missing")),
        (NotFoundError, lambda: sn.prepare("x", "missing")),
        (InvalidArgumentError, lambda: sn.prepare("x", "act")),
        (InvalidArgumentError, lambda: sn.view("x", "v")),
        (FailedPreconditionError, lambda: sn.commit("x", "v")),
        (FailedPreconditionError, lambda: sn.mounts("c")),
        (InvalidArgumentError, lambda: sn.prepare("x", labels={"k": "v" * 5000})),
        (InvalidArgumentError, lambda: sn.commit("", "act")),
        (InvalidArgumentError, lambda: sn.walk("name==a,")),
        (NotFoundError, lambda: sn.remove("missing")),
        (FailedPreconditionError, lambda: sn.remove("c")),
        (InvalidArgumentError, lambda: sn.update(Info(name="c"), "kind")),
    ]
    for kind, call in cases:
        with pytest.raises(kind):
            call()
        assert store_state(sn) == before, call


def test_key_of_511_bytes(sn: OverlaySnapshotter) -> None:
    key = "é" * 255 + "k"  # 511 bytes of UTF-8
    sn.prepare(key)
    assert sn.stat(key).name == key
    sn.commit(key[1:] + "n", key)
    assert sn.stat(key[1:] + "n").kind == Kind.COMMITTED
    with pytest.raises(InvalidArgumentError):
        sn.prepare(key + "x")


# -- removal and cleanup -----------------------------------------------------------


def test_remove_deep_active(sn: OverlaySnapshotter) -> None:
    sn.prepare("deep")
    make_chain(Path(sn.root, "snapshots", "1", "fs", "d"), 4999)  # a path past PATH_MAX
    sn.remove("deep")
    assert os.listdir(Path(sn.root, "snapshots")) == []


def test_async_remove_leaves_dirs_for_cleanup(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "r", sync=False, async_remove=True) as s:
        s.prepare("a")
        s.prepare("b")
        s.remove("a")
        snaps = Path(s.root, "snapshots")
        assert sorted(os.listdir(snaps)) == ["1", "2"]
        (snaps / "new-crashed").mkdir()
        (snaps / "99").mkdir()
        s.cleanup()
        assert sorted(os.listdir(snaps)) == ["2"]
        assert [i.name for i in s.walk()] == ["b"]


def test_cleanup_returns_what_it_removes_and_dry_run_what_it_would(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "r", sync=False, async_remove=True) as s:
        s.prepare("keep")
        s.prepare("gone")
        s.remove("gone")
        snaps = Path(s.root, "snapshots")
        (snaps / "new-crashed" / "fs").mkdir(parents=True)
        (snaps / "7").mkdir()
        orphans = [str(snaps / n) for n in ("2", "7", "new-crashed")]
        assert s.cleanup(dry_run=True) == orphans
        assert sorted(os.listdir(snaps)) == ["1", "2", "7", "new-crashed"]  # nothing changed
        assert s.cleanup() == orphans
        assert os.listdir(snaps) == ["1"]
        assert s.cleanup() == s.cleanup(dry_run=True) == []


def test_leftover_dir_of_crashed_create_is_replaced(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "r", sync=False) as s:
        snaps = Path(s.root, "snapshots")
        (snaps / "1" / "fs").mkdir(parents=True)
        (snaps / "1" / "fs" / "stale").write_text("left by a crash")
        s.prepare("a")
        assert os.listdir(snaps / "1" / "fs") == []


def test_ids_never_reused_across_reopen(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "r", sync=False) as s:
        s.prepare("a")
        s.prepare("b")
        s.remove("b")
    with OverlaySnapshotter(tmp_path / "r", sync=False) as s:
        s.prepare("c")
        assert sorted(os.listdir(Path(s.root, "snapshots"))) == ["1", "3"]


def test_filesystem_without_d_type_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No filesystem without d_type can be made here (xfs ftype=0 needs a v4
    # filesystem this kernel lacks), so the probe's answer is substituted.
    from pysnap import kernel

    assert kernel.supports_d_type(str(tmp_path))  # ext4 and tmpfs report d_type
    monkeypatch.setattr(kernel, "supports_d_type", lambda path: False)
    with pytest.raises(FailedPreconditionError, match="d_type"):
        OverlaySnapshotter(tmp_path / "r")
    assert not (tmp_path / "r" / "metadata.lmdb").exists()
    assert not (tmp_path / "r" / "snapshots").exists()  # a retry probes again


def test_create_survives_concurrent_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The d_type probe of a new root must not sit where cleanup() reaps
    # orphans: another process that opens the root meanwhile and cleans up
    # would delete it.
    import subprocess
    import sys
    import tempfile

    root = tmp_path / "r"
    cleanup = f"import pysnap; pysnap.OverlaySnapshotter({str(root)!r}).cleanup()"
    real_mkdtemp = tempfile.mkdtemp
    probes: list[str] = []

    def mkdtemp_then_cleanup(*args: object, **kwargs: object) -> object:
        path = real_mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
        if os.fsdecode(os.path.basename(path)).startswith("d_type-test-"):
            probes.append(path)
            subprocess.run([sys.executable, "-c", cleanup], check=True)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_cleanup)
    OverlaySnapshotter(root, sync=False).close()
    assert len(probes) == 1
    assert sorted(os.listdir(root / "snapshots")) == []


@pytest.mark.root
def test_open_of_an_existing_root_writes_nothing(tmp_path: Path) -> None:
    """The d_type probe runs once, when the root is created: on a file system
    without a free inode an existing root still opens, reads and removes."""
    from pysnap.mounts import unmount_all
    from snapcore import mount as _sys

    disk = tmp_path / "disk"
    disk.mkdir()
    _sys.mount("tmpfs", disk, "tmpfs", 0, "size=16m,nr_inodes=64")
    try:
        root = disk / "r"
        with OverlaySnapshotter(root, sync=False) as s:
            s.prepare("a")
            s.commit("base", "a")
            s.prepare("b", parent="base")
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        n = 0
        with contextlib.suppress(OSError):  # ENOSPC: no inode left
            while True:
                (disk / f"fill-{n}").touch()
                n += 1
        with pytest.raises(OSError):
            (disk / "one-more").mkdir()
        with OverlaySnapshotter(root, sync=False) as s:
            assert sorted(i.name for i in s.walk()) == ["b", "base"]
            s.remove("b")
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
            f for f in files if not f.startswith("snapshots/2")
        ]
    finally:
        unmount_all(disk, detach=True)


@pytest.mark.parametrize("limit", [8 << 20, 200])
def test_lowerdir_of_kept_chains_matches_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """lowerdir values kept per chain (emptied past a limit) are the layers' upper dirs."""
    monkeypatch.setattr("pysnap.snapdirs._LOWERDIRS_MAX", limit)
    with OverlaySnapshotter(tmp_path / "a", upperdir_label=True) as sn:
        uppers: list[str] = []
        parent = ""
        for i in range(6):
            sn.prepare(f"a{i}", parent)
            uppers.insert(0, sn.stat(f"a{i}").labels[UPPERDIR_LABEL])
            sn.commit(f"c{i}", f"a{i}")
            parent = f"c{i}"
            for key, kind in ((f"v{i}", "view"), (f"t{i}", "prepare")):
                getattr(sn, kind)(key, parent)
                (m,) = sn.mounts(key)
                want = ":".join(uppers)
                if kind == "view" and i == 0:  # one parent: a bind of it
                    assert m.source == want
                else:
                    assert f"lowerdir={want}" in m.options
