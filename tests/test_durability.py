"""Durable calls with fewer flushes, and the recovery that replaces the directory fsyncs.

Issue 14: a durable prepare+commit syncs its two LMDB transactions only (four
flushes, as containerd's two bolt commits). A new snapshot's directories are
empty and are not synced; when a power loss lost them, the next use of the
snapshot recreates them exactly as prepare made them, or, for a COMMITTED
snapshot that held files, raises CorruptStoreError. These tests delete the
directories behind fresh records, as a power loss would, and use them.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import flushes
import pytest

import pysnap
from pysnap.errors import CorruptStoreError, NotFoundError
from pysnap.fsutil import remove_tree
from pysnap.overlay import UPPERDIR_LABEL


@pytest.mark.skipif(not flushes.available(), reason="needs strace")
@pytest.mark.parametrize(("sync", "expected"), [(True, 4), (False, 0)])
def test_flushes_per_prepare_commit(tmp_path: Path, sync: bool, expected: int) -> None:
    roots = iter(range(2))
    per_layer = flushes.per_layer(
        lambda n: [
            sys.executable,
            "-c",
            flushes.CHAIN_SCRIPT,
            str(tmp_path / str(next(roots))),
            str(n),
            str(int(sync)),
        ],
        3,
        8,
    )
    # sync=True: each of the two transactions is an fdatasync and an O_DSYNC
    # meta-page write (LMDB), and nothing else.
    assert per_layer["total"] == expected, per_layer


def _sn(root: Path) -> pysnap.OverlaySnapshotter:
    return pysnap.OverlaySnapshotter(root, upperdir_label=True)


def _dir(sn: pysnap.OverlaySnapshotter, key: str) -> str:
    return os.path.dirname(sn.stat(key).labels[UPPERDIR_LABEL])


def _lose(sn: pysnap.OverlaySnapshotter, *keys: str) -> list[str]:
    """Delete the directories of keys, as a power loss that kept their records would."""
    dirs = [_dir(sn, k) for k in keys]
    for d in dirs:
        remove_tree(d)
    return dirs


def _assert_as_prepared(d: str, work: bool, owner: tuple[int, int] | None = None) -> None:
    st = os.lstat(f"{d}/fs")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    if owner is not None:
        assert (st.st_uid, st.st_gid) == owner
    if work:
        wt = os.lstat(f"{d}/work")
        assert stat.S_ISDIR(wt.st_mode) and stat.S_IMODE(wt.st_mode) == 0o711
    else:
        assert not os.path.exists(f"{d}/work")


def test_mounts_restores_a_lost_active(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("base-a")
        sn.commit("base", "base-a")
        want = sn.prepare("a", "base")
        (d,) = _lose(sn, "a")
        assert sn.mounts("a") == want
        _assert_as_prepared(d, work=True)


def test_mounts_restores_a_lost_view(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("base-a")
        sn.commit("base", "base-a")
        want = sn.view("v", "base")
        (d,) = _lose(sn, "v")
        assert sn.mounts("v") == want
        _assert_as_prepared(d, work=False)


def test_mounts_restores_only_what_is_missing(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a")
        d = _dir(sn, "a")
        Path(d, "fs", "kept").write_text("x")
        os.rmdir(f"{d}/work")
        sn.mounts("a")
        _assert_as_prepared(d, work=True)
        assert Path(d, "fs", "kept").read_text() == "x"


def test_commit_restores_a_lost_active_as_empty(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a")
        (d,) = _lose(sn, "a")
        sn.commit("c", "a")
        assert sn.usage("c").inodes == 1
        _assert_as_prepared(d, work=True)


def _owner(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_restores_a_lost_empty_committed_owned_like_its_parent(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a0")
        os.chown(sn.stat("a0").labels[UPPERDIR_LABEL], 1234, 1235)  # still one inode: empty
        sn.commit("c0", "a0")
        sn.prepare("a1", "c0")
        sn.commit("c1", "a1")
        (d,) = _lose(sn, "c1")
        sn.prepare("b", "c1")
        _assert_as_prepared(d, work=True, owner=(1234, 1235))
        assert _owner(sn.stat("b").labels[UPPERDIR_LABEL]) == (1234, 1235)


def test_view_restores_a_lost_chain_of_empty_committed(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a0")
        sn.commit("c0", "a0")
        sn.prepare("a1", "c0")
        sn.commit("c1", "a1")
        lost = _lose(sn, "c0", "c1")
        sn.view("v", "c1")
        for d in lost:
            _assert_as_prepared(d, work=True, owner=(os.getuid(), os.getgid()))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_restored_active_is_owned_like_its_parent(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a0")
        os.chown(sn.stat("a0").labels[UPPERDIR_LABEL], 1234, 1235)
        sn.commit("c0", "a0")
        sn.prepare("a1", "c0")
        (d,) = _lose(sn, "a1")
        sn.mounts("a1")
        _assert_as_prepared(d, work=True, owner=(1234, 1235))


@pytest.mark.parametrize("use", ["prepare", "view"])
def test_lost_committed_with_files_is_corrupt(tmp_path: Path, use: str) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a")
        Path(sn.stat("a").labels[UPPERDIR_LABEL], "file").write_text("data")
        sn.commit("c", "a")
        _lose(sn, "c")
        before = sorted(os.listdir(tmp_path / "snapshots"))
        with pytest.raises(CorruptStoreError, match="'c'"):
            getattr(sn, use)("b", "c")
        # nothing changed: no record, no directory, no empty layer made up
        with pytest.raises(NotFoundError):
            sn.stat("b")
        assert sorted(os.listdir(tmp_path / "snapshots")) == before
        assert [i.name for i in sn.walk()] == ["c"]


def test_open_does_not_scan_records(tmp_path: Path) -> None:
    with _sn(tmp_path) as sn:
        sn.prepare("a")
        (d,) = _lose(sn, "a")
    with _sn(tmp_path) as sn:
        assert not os.path.exists(d)  # only a use restores it
        sn.mounts("a")
        assert os.path.isdir(f"{d}/fs")


@pytest.mark.root
def test_restored_chain_mounts_and_takes_writes(tmp_path: Path) -> None:
    with _sn(tmp_path / "root") as sn:
        for i in range(3):
            sn.prepare(f"a{i}", f"c{i - 1}" if i else "")
            sn.commit(f"c{i}", f"a{i}")
        sn.prepare("tip", "c2")
        _lose(sn, "c1", "c2", "tip")
        with pysnap.mounted(sn.mounts("tip"), dir=tmp_path) as path:
            Path(path, "new").write_text("ok")
        sn.commit("top", "tip")
        assert sn.usage("top").inodes == 2
