"""A hostile user's store: close() racing threads, fork, damaged or lost metadata,
symlinks and mounts inside the root, a full disk, a full map, bad update() input.

What could crash (SIGBUS, SIGSEGV) runs in a child (tests/store_worker.py or
the CLI), so a crash is a signal exit the test sees, not a dead pytest.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from pysnap import OverlaySnapshotter
from pysnap.cli import main
from pysnap.errors import (
    ClosedError,
    CorruptStoreError,
    FailedPreconditionError,
    InvalidArgumentError,
    MapFullError,
    StoreOSError,
    kind_of,
)
from snapcore import mount as sysmount

WORKER = str(Path(__file__).with_name("store_worker.py"))


def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, WORKER, *args], capture_output=True, text=True, timeout=300
    )


def committed_root(root: Path, n: int = 3) -> None:
    with OverlaySnapshotter(root) as sn:
        parent = ""
        for i in range(n):
            sn.prepare(f"a{i}", parent, labels={"pad": "x" * 3000})  # a few pages each
            sn.commit(f"c{i}", f"a{i}")
            parent = f"c{i}"


def data_mdb(root: Path) -> Path:
    return root / "metadata.lmdb" / "data.mdb"


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pysnap", "--root", str(root), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Targets the test mounted; each is detached after the test."""
    targets: list[Path] = []
    yield targets
    for t in reversed(targets):
        sysmount.umount(t, sysmount.MNT_DETACH)


# ---- defect 2: close() while other threads work -----------------------------


def test_close_while_threads_work_never_crashes_nor_lies(tmp_path: Path) -> None:
    # 40 rounds of 4 threads on prepare/stat/walk/commit/remove, close() in the middle.
    r = run_worker("close-race", str(tmp_path / "root"), "40", "4")
    assert r.returncode == 0, r.stderr  # a crash is a negative return code (the signal)


def test_every_call_after_close_is_closed_error(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path)
    sn.prepare("a")
    info = sn.stat("a")
    sn.close()
    calls = [
        lambda: sn.stat("a"),
        lambda: sn.walk(),
        lambda: sn.prepare("b"),
        lambda: sn.view("v"),
        lambda: sn.commit("c", "a"),
        lambda: sn.update(info),
        lambda: sn.usage("a"),
        lambda: sn.mounts("a"),
        lambda: sn.remove("a"),
        lambda: sn.cleanup(),
        lambda: sn.sync(),
    ]
    for call in calls:
        with pytest.raises(ClosedError, match="closed") as e:
            call()
        assert kind_of(e.value).exit_code == 8
    sn.close()  # still harmless


# ---- defect 3: fork ---------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "gc", "close", "exit-unopened"])
def test_parent_unharmed_by_a_forked_child_that_opens_the_root(tmp_path: Path, how: str) -> None:
    # The child opens the root itself, works, and leaves by sys.exit, by GC of
    # the inherited snapshotter or by closing it; the parent's next 1,000 reads
    # and writes succeed.
    r = run_worker("fork", str(tmp_path / "root"), how)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_multiprocessing_child_opens_the_root(tmp_path: Path, start: str) -> None:
    r = run_worker("mp", str(tmp_path / "root"), start)
    assert r.returncode == 0, r.stderr


# ---- defect 4: damaged or lost metadata -------------------------------------


def test_truncated_data_file_is_a_corrupt_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    committed_root(root)
    data = data_mdb(root)
    pages = os.path.getsize(data) // 4096
    assert pages > 4
    os.truncate(data, 3 * 4096)  # below the last page, above the two meta pages
    r = cli(root, "ls")
    assert r.returncode == 9, r  # no SIGBUS: the exit code of the table
    doc = json.loads(r.stderr)["error"]
    assert doc["code"] == "data_loss" and doc["exit_code"] == 9
    assert str(data) in doc["message"] and "truncated" in doc["message"]
    with pytest.raises(CorruptStoreError, match="truncated") as e:
        OverlaySnapshotter(root)
    assert str(data) in str(e.value)
    assert os.path.getsize(data) == 3 * 4096  # nothing changed


@pytest.mark.parametrize("damage", ["missing", "empty", "no meta record"])
def test_lost_store_next_to_snapshot_directories_is_refused(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "root"
    committed_root(root)
    layers = sorted(os.listdir(root / "snapshots"))
    data = data_mdb(root)
    if damage == "missing":
        data.unlink()
    elif damage == "empty":
        os.truncate(data, 0)
    else:
        data.unlink()
        lmdb.open(str(data.parent), max_dbs=8).close()  # an LMDB file with no records
    found = {"missing": "was missing", "empty": "was empty"}.get(damage, "has no meta record")
    for _ in range(2):  # refused again: the refusal recorded nothing
        with pytest.raises(FailedPreconditionError) as e:
            OverlaySnapshotter(root)
        msg = str(e.value)
        assert f"{data} {found}, but {root / 'snapshots'} holds {len(layers)} snapshot" in msg
        assert "move snapshots/ aside or restore data.mdb" in msg
        found = "has no meta record"  # the refused open left an LMDB file, nothing in it
    assert sorted(os.listdir(root / "snapshots")) == layers


def test_meta_record_comes_before_snapshots_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    OverlaySnapshotter(root).close()
    env = lmdb.open(str(root / "metadata.lmdb"), max_dbs=8)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        assert txn.get(b"schema", db=meta) is not None
        assert txn.get(b"last_id", db=meta) is not None
    env.close()
    # snapshots/ without a meta record only arises from a lost store, which is
    # refused above; a store whose meta record is there but snapshots/ is not
    # (a crash between the two) simply opens.
    os.rmdir(root / "snapshots")
    with OverlaySnapshotter(root) as sn:
        sn.prepare("a")


def test_directories_above_the_counter_are_crash_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    committed_root(root, n=1)
    (root / "snapshots" / "7" / "fs").mkdir(parents=True)  # a create that crashed
    with OverlaySnapshotter(root) as sn:
        sn.cleanup()
        assert sorted(os.listdir(root / "snapshots")) == ["1"]


# ---- defect 5: symlinks and foreign names -----------------------------------


def test_symlinked_snapshots_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "precious"
    (elsewhere / "1").mkdir(parents=True)
    (elsewhere / "1" / "data").write_text("keep")
    os.symlink(elsewhere, root / "snapshots")
    with pytest.raises(FailedPreconditionError, match="symlink"):
        OverlaySnapshotter(root)
    assert (elsewhere / "1" / "data").read_text() == "keep"
    assert not (root / "metadata.lmdb").exists()


def test_cleanup_reaps_only_the_names_pysnap_makes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    with OverlaySnapshotter(root) as sn:
        sn.prepare("live")
        ours = ["9", "12", "new-abc", "rm-3-0123456789ab"]
        foreign = ["\u0661", "\u00b2", "07", "0", "lost+found", "notes.txt", "9x"]
        for name in ours + foreign:
            (root / "snapshots" / name).mkdir()
            (root / "snapshots" / name / "f").write_text(name)
        with caplog.at_level(logging.WARNING, logger="pysnap.overlay"):
            sn.cleanup()
        assert sorted(os.listdir(root / "snapshots")) == sorted(["1", *foreign])
        for name in foreign:
            assert any(name in r.getMessage() for r in caplog.records), name


# ---- defect 6: a mount inside a snapshot directory --------------------------


@pytest.mark.root
def test_remove_leaves_mounts_inside_a_snapshot(
    tmp_path: Path, mounts: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    with OverlaySnapshotter(root, upperdir_label=True) as sn:
        sn.prepare("a")
        upper = Path(sn.stat("a").labels["containerd.io/snapshot/overlay.upperdir"])
        (upper / "vol").mkdir()
        (upper / "bind").mkdir()
        (upper / "own").write_text("goes")
        sysmount.mount("tmpfs", upper / "vol", "tmpfs", 0, "size=1m")
        mounts.append(upper / "vol")
        (upper / "vol" / "data").write_text("keep")
        volume = tmp_path / "volume"  # same file system: a bind mount
        volume.mkdir()
        (volume / "data").write_text("keep too")
        sysmount.mount(str(volume), upper / "bind", "", sysmount.MS_BIND)
        mounts.append(upper / "bind")
        with caplog.at_level(logging.WARNING, logger="pysnap.overlay"):
            sn.remove("a")
        assert (upper / "vol" / "data").read_text() == "keep"
        assert (volume / "data").read_text() == "keep too"
        assert not (upper / "own").exists()
        assert any(
            str(upper / "vol") in r.getMessage() or str(upper / "bind") in r.getMessage()
            for r in caplog.records
        )
        for t in reversed(mounts):
            sysmount.umount(t, 0)
        mounts.clear()
        sn.cleanup()  # unmounted: now it goes
        assert os.listdir(root / "snapshots") == []


# ---- defect 7: error kinds --------------------------------------------------


@pytest.mark.root
def test_full_disk_in_a_commit_is_a_store_oserror(
    tmp_path: Path, mounts: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    sysmount.mount("tmpfs", small, "tmpfs", 0, "size=2m")
    mounts.append(small)
    root = small / "root"
    with OverlaySnapshotter(root) as sn:
        sn.prepare("a")
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        assert full.value.errno == errno.ENOSPC
        big = {f"k{i}": "v" * 4000 for i in range(64)}  # new pages at the end of the file
        with pytest.raises(StoreOSError) as e:
            sn.prepare("b", labels=big)
        assert isinstance(e.value, OSError)
        assert e.value.errno == errno.ENOSPC
        assert e.value.filename == str(data_mdb(root))
        assert kind_of(e.value).exit_code == 7
        assert [i.name for i in sn.walk()] == ["a"]  # no record
    # The same through the CLI: exit 7, the errno name in --json.
    labels = [a for k, v in big.items() for a in ("--label", f"{k}={v}")]
    assert main(["--root", str(root), "--json", "prepare", "b", *labels]) == 7
    doc = json.loads(capsys.readouterr().err.splitlines()[-1])["error"]
    assert doc["code"] == "ENOSPC" and str(data_mdb(root)) in doc["message"]
    with OverlaySnapshotter(root) as sn:
        # Its directory may stay: once the commit failed, the write lock is
        # gone and removing it could race the next create of that id, which
        # removes the leftover itself (as after a crash).
        filler.unlink()
        sn.prepare("b", labels=big)  # space again: no reopen needed
        assert sorted(i.name for i in sn.walk()) == ["a", "b"]
        sn.cleanup()
        assert sorted(os.listdir(root / "snapshots")) == ["1", "2"]


@pytest.mark.parametrize("upperdir_label", [False, True])
@pytest.mark.parametrize("bad", [None, "a", {"name": "a"}, ("a",), 5])
def test_update_needs_an_info(tmp_path: Path, upperdir_label: bool, bad: object) -> None:
    with OverlaySnapshotter(tmp_path, upperdir_label=upperdir_label) as sn:
        sn.prepare("a", labels={"x": "1"})
        with pytest.raises(InvalidArgumentError, match="Info"):
            sn.update(bad, "labels")  # type: ignore[arg-type]
        assert sn.stat("a").labels.get("x") == "1"


def test_map_full_names_the_map_size_option(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path, map_size=1 << 20) as sn:
        big = {f"k{i}": "v" * 4000 for i in range(16)}
        with pytest.raises(MapFullError, match=r"map_size=") as e:
            for n in range(1000):
                sn.prepare(f"s{n}", labels=big)
        assert kind_of(e.value).exit_code == 10
        assert len(sn.walk()) == n  # the failed create left nothing
    with OverlaySnapshotter(tmp_path, map_size=1 << 24) as sn:  # a larger map: room again
        sn.prepare("more", labels=big)


def test_cli_reports_store_kinds_from_the_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    committed_root(root, n=1)
    data_mdb(root).unlink()
    r = cli(root, "ls")
    doc = json.loads(r.stderr)["error"]
    assert (r.returncode, doc["code"], doc["exit_code"]) == (5, "failed_precondition", 5)
    assert main(["--root", str(tmp_path / "ok"), "--json", "info", "nope"]) == 3


def test_cli_map_size_option_and_map_full_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "root")
    labels = [a for i in range(16) for a in ("--label", f"k{i}={'v' * 4000}")]
    small = ["--root", root, "--map-size", str(1 << 20), "--json"]
    for n in range(200):
        code = main([*small, "prepare", f"s{n}", *labels])
        if code:
            break
    assert code == 10
    doc = json.loads(capsys.readouterr().err.splitlines()[-1])["error"]
    assert doc["code"] == "resource_exhausted" and "--map-size" in doc["message"]
    assert main(["--root", root, "--map-size", str(1 << 24), "prepare", "more", *labels]) == 0
    assert main(["--root", root, "--map-size", "0", "ls"]) == 2
