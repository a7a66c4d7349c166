"""Many processes and threads on one root at once, and cleanup() racing creates.

4 processes (tests/snap_worker.py, started with subprocess: no LMDB
environment crosses a fork) run 2 threads each over one snapshotter per
process. Each thread works on keys of its own prefix, on a few shared parents
that the test pins with a child, and on a few contended names; every thread
runs cleanup() now and then. Each process reports what it holds at the end and
which errors it met; only the errors an operation deserves are tolerated (a
contended name taken: AlreadyExistsError; removing a pinned parent or mounts()
of a committed snapshot: FailedPreconditionError). Everything else fails the
worker, including a create whose directory is missing right after it returned.

Forced interleavings, in one process: a create taking the id of a crashed
create's leftover between cleanup()'s listing and its removal; a key removed,
or removed and prepared again, while commit walks its upper dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import snap_worker as w

import pysnap.overlay
from pysnap import Kind, OverlaySnapshotter
from pysnap.errors import NotFoundError

WORKER = str(Path(__file__).with_name("snap_worker.py"))
PROCESSES = 4
OPS_PER_THREAD = int(os.environ.get("PYSNAP_CONCURRENCY_OPS", "500"))


def live_ids(sn: OverlaySnapshotter) -> set[str]:
    return {str(w.snapshot_id(w.upper_of(i))) for i in sn.walk()}


def test_processes_and_threads_share_one_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    go = tmp_path / "go"
    expected: dict[str, tuple[int, str]] = {}  # name -> (kind, parent)
    with OverlaySnapshotter(root, sync=False, upperdir_label=True) as sn:
        parent = ""
        for i in range(3):
            sn.prepare(f"a-shared-{i}", parent)
            w.write_exact(w.upper_of(sn.stat(f"a-shared-{i}")), f"shared-{i}")
            sn.commit(f"shared-{i}", f"a-shared-{i}")
            sn.view(f"pin-{i}", f"shared-{i}")  # the shared parents can never be removed
            expected[f"shared-{i}"] = (Kind.COMMITTED, parent)
            expected[f"pin-{i}"] = (Kind.VIEW, f"shared-{i}")
            parent = f"shared-{i}"
        # What a crash leaves: directories for the next ids, whose creates died
        # before their transactions committed. Creates must reuse them while
        # cleanup() runs elsewhere.
        next_id = max(int(i) for i in live_ids(sn)) + 1
        for i in range(next_id, next_id + 16):
            os.makedirs(root / "snapshots" / str(i) / "fs" / "stale")

    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "concurrency",
                str(root),
                str(n),
                str(OPS_PER_THREAD),
                "7",
                "1" if n % 2 else "0",
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n", p.stderr.read() if p.stderr else ""
        go.touch()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    reports = []
    for n, (p, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 0, f"process {n} exited {p.returncode}:\n{err}"
        reports.append(json.loads(out))
    unexpected = [u for r in reports for u in r["unexpected"]]
    assert not unexpected, f"{len(unexpected)} unexpected errors, first:\n" + "\n".join(
        unexpected[:3]
    )

    won: dict[str, tuple[int, str]] = {}
    for r in reports:
        for name, (kind, parent) in list(r["live"].items()) + list(r["won"].items()):
            assert name not in expected and name not in won, f"{name} reported twice"
            (won if name.startswith("race-") else expected)[name] = (kind, parent)
    expected.update(won)
    ops: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in reports:
        for k, v in r["ops"].items():
            ops[k] = ops.get(k, 0) + v
        for k, v in r["expected"].items():
            errors[k] = errors.get(k, 0) + v
    assert sum(ops.values()) == PROCESSES * 2 * OPS_PER_THREAD
    assert ops.get("cleanup", 0) > 0 and ops.get("commit", 0) > 0 and ops.get("remove", 0) > 0

    with OverlaySnapshotter(root, sync=False, upperdir_label=True) as sn:
        infos = sn.walk()
        names = [i.name for i in infos]
        assert len(names) == len(set(names)), "a snapshot listed twice"
        got = {i.name: (int(i.kind), i.parent) for i in infos}
        assert got.keys() - expected.keys() == set(), "snapshots nobody made"
        assert expected.keys() - got.keys() == set(), "snapshots lost"
        assert got == expected
        uppers = [w.upper_of(i) for i in infos]
        assert len(set(uppers)) == len(uppers), "two snapshots share a directory"
        for info in infos:
            upper = w.upper_of(info)
            assert os.path.isdir(upper), f"{info.name}: {upper} is gone"
            if info.kind == Kind.ACTIVE:
                assert os.path.isdir(os.path.join(os.path.dirname(upper), "work"))
                assert not os.path.exists(os.path.join(upper, "stale")), info.name
            if info.kind == Kind.COMMITTED:
                assert w.content_problem(upper, info.name) is None
                assert tuple(sn.usage(info.name)) == w.tree_usage(upper)
        sn.cleanup()
        assert set(os.listdir(root / "snapshots")) == live_ids(sn)
    print(f"ops {ops}, deserved errors {errors}")


def test_cleanup_never_reaps_a_create_that_reuses_a_leftover(tmp_path: Path) -> None:
    """cleanup() lists snapshots/<id> of a crashed create as an orphan; a create that
    takes that id between the listing and the removal must keep its directory.

    The interleaving is forced: the create runs where cleanup() hands its
    orphans over to be removed, after its transaction ended, as another thread
    or process may at any moment.
    """
    root = tmp_path / "root"
    with OverlaySnapshotter(root, sync=False, upperdir_label=True) as sn:
        sn.prepare("first")
        next_id = w.snapshot_id(w.upper_of(sn.stat("first"))) + 1
        leftover = root / "snapshots" / str(next_id)
        os.makedirs(leftover / "fs" / "stale")  # a create with that id died before commit

        real_remove_dirs = sn._remove_dirs
        created: list[str] = []

        def remove_dirs(paths: list[str]) -> set[str]:
            if not created:  # the first call is cleanup()'s (remove() is not called)
                sn.prepare("second")
                created.append(w.upper_of(sn.stat("second")))
            return real_remove_dirs(paths)

        sn._remove_dirs = remove_dirs  # type: ignore[method-assign]
        sn.cleanup()
        if not created:  # cleanup() did not hand anything over: create after it
            sn.prepare("second")
            created.append(w.upper_of(sn.stat("second")))
        del sn._remove_dirs

        upper = created[0]
        assert w.upper_of(sn.stat("second")) == upper
        assert os.path.isdir(upper), f"cleanup() removed {upper}, the directory of a live snapshot"
        assert os.path.isdir(os.path.join(os.path.dirname(upper), "work"))
        assert os.listdir(upper) == []  # the leftover's content is not the new snapshot's
        sn.cleanup()
        assert set(os.listdir(root / "snapshots")) == live_ids(sn)


class _DuDuring:
    """snapcore.du, with ``action()`` run once at the start of the next disk_usage walk."""

    def __init__(self, real: object, action: Callable[[], object]) -> None:
        self._real, self._action = real, action

    def __getattr__(self, attr: str) -> object:
        return getattr(self._real, attr)

    def disk_usage(self, *roots: str, **kw: object) -> object:
        action, self._action = self._action, lambda: None
        action()
        return self._real.disk_usage(*roots, **kw)  # type: ignore[attr-defined]


def test_commit_rechecks_the_id_after_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is removed and prepared again (a new id) while commit walks the old
    upper dir: the commit must fail with NotFoundError and leave the new one alone."""
    with OverlaySnapshotter(tmp_path / "root", sync=False, upperdir_label=True) as sn:
        sn.prepare("k")
        old = w.upper_of(sn.stat("k"))
        w.write_exact(old, "c-name")

        def replace_k() -> None:
            sn.remove("k")
            sn.prepare("k")

        monkeypatch.setattr(pysnap.overlay, "du", _DuDuring(pysnap.overlay.du, replace_k))
        with pytest.raises(NotFoundError):
            sn.commit("name", "k")
        monkeypatch.undo()
        with pytest.raises(NotFoundError):
            sn.stat("name")
        info = sn.stat("k")
        assert info.kind == Kind.ACTIVE and w.upper_of(info) != old
        assert os.listdir(w.upper_of(info)) == []
        sn.commit("name", "k")
        assert tuple(sn.usage("name")) == w.tree_usage(w.upper_of(info))


def test_commit_of_a_key_removed_before_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is removed (its upper dir with it) before commit walks: NotFoundError."""
    with OverlaySnapshotter(tmp_path / "root", sync=False, upperdir_label=True) as sn:
        sn.prepare("k")
        monkeypatch.setattr(
            pysnap.overlay, "du", _DuDuring(pysnap.overlay.du, lambda: sn.remove("k"))
        )
        with pytest.raises(NotFoundError):
            sn.commit("name", "k")
        monkeypatch.undo()
        assert sn.walk() == []
        sn.cleanup()
        assert os.listdir(tmp_path / "root" / "snapshots") == []
