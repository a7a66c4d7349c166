"""Crash safety: child processes killed with SIGKILL at random and at each dangerous point.

A child (tests/snap_worker.py, started with subprocess, so no LMDB environment
ever crosses a fork) works on a root and is killed; the parent reopens the root
and checks what DESIGN.md promises: every operation all-or-nothing, at worst an
orphan directory that cleanup() removes, committed files never lost or changed,
ids never reused, and a next run that never trips over what the killed one left.
No mounts: children write straight into the upper directories.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import snap_worker as w

from pysnap import Kind, OverlaySnapshotter
from pysnap.errors import NotFoundError

WORKER = str(Path(__file__).with_name("snap_worker.py"))
KILLS = int(os.environ.get("PYSNAP_CRASH_KILLS", "200"))


def spawn(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_hook(*args: str) -> str:
    """Run a hook child that must die by SIGKILL at its hook; what it printed."""
    p = spawn(*args)
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, f"child exited {p.returncode}: {out}\n{err}"
    return out


def open_sn(root: Path) -> OverlaySnapshotter:
    return OverlaySnapshotter(root, sync=False, upperdir_label=True)


def snapshot_dirs(root: Path) -> set[str]:
    return set(os.listdir(root / "snapshots"))


def live_ids(sn: OverlaySnapshotter) -> set[str]:
    return {str(w.snapshot_id(w.upper_of(i))) for i in sn.walk()}


def check_store(sn: OverlaySnapshotter) -> list[str]:
    """What is wrong with a reopened root (an empty list when nothing is)."""
    problems: list[str] = []
    infos = sn.walk()
    by_name = {i.name: i for i in infos}
    if len(by_name) != len(infos):
        problems.append(f"walk lists a name twice: {sorted(i.name for i in infos)}")
    uppers = [w.upper_of(i) for i in infos]
    if len(set(uppers)) != len(uppers):
        problems.append(f"two snapshots share a directory: {sorted(uppers)}")
    for info in infos:
        upper = w.upper_of(info)
        if not os.path.isdir(upper):
            problems.append(f"{info.name} ({info.kind!s}): no directory {upper}")
            continue
        if info.kind == Kind.ACTIVE and not os.path.isdir(os.path.dirname(upper) + "/work"):
            problems.append(f"{info.name}: active without work/")
        if info.parent and (
            info.parent not in by_name or by_name[info.parent].kind != Kind.COMMITTED
        ):
            problems.append(f"{info.name}: parent {info.parent!r} missing or not committed")
        if info.kind == Kind.COMMITTED:
            bad = w.content_problem(upper, info.name)
            if bad:
                problems.append("committed content changed: " + bad)
            elif tuple(sn.usage(info.name)) != w.tree_usage(upper):
                problems.append(
                    f"{info.name}: stored usage {sn.usage(info.name)} != {w.tree_usage(upper)}"
                )
    return problems


# -- random kills -------------------------------------------------------------------------


def test_random_kills(tmp_path: Path) -> None:
    """At least PYSNAP_CRASH_KILLS SIGKILLs at random moments over one root."""
    root = tmp_path / "root"
    rng = random.Random(int(os.environ.get("PYSNAP_CRASH_SEED", "1")))
    owner: dict[str, str] = {}  # upper path -> token of the snapshot that first owned it
    paths: dict[str, str] = {}  # token -> its upper path (commit keeps the directory)
    max_id = 0
    kills = finished = 0
    kinds_seen: set[Kind] = set()
    orphans: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
    run = 0
    while kills < KILLS:
        run += 1
        sync = "1" if run % 4 == 0 else "0"
        p = spawn("random", str(root), f"r{run}", str(rng.getrandbits(32)), sync)
        assert p.stdout is not None
        # "ready" once the root is open; "" if it died. A child stuck on what a
        # killed one left (a lock, say) fails the test instead of hanging it.
        ready, _, _ = select.select([p.stdout], [], [], 60)
        if not ready:
            p.kill()
            _, err = p.communicate()
            pytest.fail(f"run {run}: child not ready after 60 s (after {kills} kills)\n{err}")
        line = p.stdout.readline()
        if line == "ready\n":
            # Mostly short delays (many kills per second), sometimes long enough
            # for a few hundred operations.
            time.sleep(rng.choice((0.0, 0.01, 0.05, 0.1, 0.2, 0.4)) * rng.random())
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        _, err = p.communicate(timeout=60)
        if p.returncode == 0:
            finished += 1
        else:
            assert p.returncode == -signal.SIGKILL, (
                f"run {run} (after {kills} kills) failed, exit {p.returncode}:\n{err}"
            )

        with open_sn(root) as sn:
            problems = check_store(sn)
            assert not problems, f"after run {run} ({kills} kills):\n" + "\n".join(problems)
            new_ids = []
            for info in sn.walk():
                kinds_seen.add(info.kind)
                tok, path = info.name[2:], w.upper_of(info)
                if path in owner:
                    assert owner[path] == tok, (
                        f"after run {run}: {path} belonged to {owner[path]}, now to {info.name}"
                    )
                else:
                    assert tok not in paths, f"{info.name} moved from {paths[tok]} to {path}"
                    owner[path], paths[tok] = tok, path
                    new_ids.append(w.snapshot_id(path))
            # Ids come from a counter and are never reused: anything new is newer
            # than everything seen before.
            assert all(i > max_id for i in new_ids), (run, max_id, sorted(new_ids))
            max_id = max([max_id, *new_ids])
            # Evidence of kills inside the dangerous windows (not asserted: random).
            live = live_ids(sn)
            for d in snapshot_dirs(root) - live:
                kind = "new-*" if d.startswith("new-") else "id" if d.isdigit() else "other"
                orphans[kind].add(d)

    with open_sn(root) as sn:
        sn.cleanup()
        assert snapshot_dirs(root) == live_ids(sn)
        assert not check_store(sn)
        assert len(sn.walk()) > 0
    assert kinds_seen == {Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED}
    print(
        f"{kills} kills, {finished} runs finished, {len(owner)} snapshots seen, "
        f"max id {max_id}, distinct orphans seen after kills: "
        f"{ {k: len(v) for k, v in orphans.items()} }"
    )


# -- one dangerous point each, with real kills -------------------------------------------


def make_base(root: Path) -> dict[str, str]:
    """A committed base with files, a committed leaf on it, an active and a view: name -> upper."""
    with open_sn(root) as sn:
        sn.prepare("a-base", "")
        w.write_exact(w.upper_of(sn.stat("a-base")), "c-base")
        sn.commit("c-base", "a-base")
        sn.prepare("a-leaf", "c-base")
        w.write_exact(w.upper_of(sn.stat("a-leaf")), "c-leaf")
        sn.commit("c-leaf", "a-leaf")
        sn.prepare("a-work", "c-leaf")
        w.write_exact(w.upper_of(sn.stat("a-work")), "c-work")
        sn.view("v-look", "c-base")
        return {i.name: w.upper_of(i) for i in sn.walk()}


def assert_untouched(sn: OverlaySnapshotter, before: dict[str, str], gone: str = "") -> None:
    now = {i.name: w.upper_of(i) for i in sn.walk()}
    assert now == {k: v for k, v in before.items() if k != gone}
    assert not check_store(sn)
    if "a-work" in now:  # the active whose content make_base wrote
        assert not w.content_problem(now["a-work"], "c-work")


@pytest.mark.parametrize("parent", ["", "c-base"])
@pytest.mark.parametrize("kind", ["prepare", "view"])
def test_killed_after_rename_before_commit(tmp_path: Path, kind: str, parent: str) -> None:
    """Killed inside the create's write transaction, after new-* became snapshots/<id>."""
    root = tmp_path / "root"
    before = make_base(root)
    leftover = run_hook("hook-create", str(root), kind, "victim", parent).strip()
    assert os.path.basename(os.path.dirname(leftover)) == "snapshots"
    assert os.path.exists(os.path.join(leftover, "fs", "leftover-marker"))

    with open_sn(root) as sn:
        with pytest.raises(NotFoundError):
            sn.stat("victim")
        assert_untouched(sn, before)
        assert os.path.basename(leftover) not in live_ids(sn)
        # The next create gets the same id (the counter was not committed) and
        # must replace the leftover cleanly, without an error.
        sn.prepare("a-next", "c-base")
        upper = w.upper_of(sn.stat("a-next"))
        assert os.path.dirname(upper) == leftover
        assert os.listdir(upper) == []
        assert sorted(os.listdir(leftover)) == ["fs", "work"]
        sn.remove("a-next")
        sn.cleanup()
        assert snapshot_dirs(root) == live_ids(sn)
        assert_untouched(sn, before)
        # And the same key can be made now.
        (sn.prepare if kind == "prepare" else sn.view)("victim", parent)
        assert not check_store(sn)


def test_killed_after_mkdtemp(tmp_path: Path) -> None:
    """Killed inside the create's write transaction, with only new-* made."""
    root = tmp_path / "root"
    before = make_base(root)
    tmp = run_hook("hook-mkdtemp", str(root), "prepare", "victim", "c-base").strip()
    assert os.path.basename(tmp).startswith("new-") and os.path.isdir(tmp)
    with open_sn(root) as sn:
        with pytest.raises(NotFoundError):
            sn.stat("victim")
        assert_untouched(sn, before)
        sn.prepare("victim", "c-base")
        assert not check_store(sn)
        sn.cleanup()
        assert not os.path.exists(tmp)
        assert snapshot_dirs(root) == live_ids(sn)


@pytest.mark.parametrize("target", ["a-work", "v-look", "c-leaf-2"])
def test_killed_after_remove_record(tmp_path: Path, target: str) -> None:
    """Killed after remove's transaction committed and before its directory went."""
    root = tmp_path / "root"
    before = make_base(root)
    with open_sn(root) as sn:
        sn.prepare("a-leaf-2", "c-base")
        w.write_exact(w.upper_of(sn.stat("a-leaf-2")), "c-leaf-2")
        sn.commit("c-leaf-2", "a-leaf-2")
        before = {i.name: w.upper_of(i) for i in sn.walk()}
    paths = json.loads(run_hook("hook-remove", str(root), target))
    orphan = os.path.dirname(before[target])
    assert paths == [orphan]
    assert os.path.isdir(orphan)

    with open_sn(root) as sn:
        with pytest.raises(NotFoundError):
            sn.stat(target)
        assert_untouched(sn, before, gone=target)
        assert os.path.basename(orphan) not in live_ids(sn)
        sn.cleanup()
        assert not os.path.exists(orphan)
        assert snapshot_dirs(root) == live_ids(sn)
        assert_untouched(sn, before, gone=target)
        # The key can be used again, in a new directory.
        sn.prepare(target, "c-base")
        assert os.path.dirname(w.upper_of(sn.stat(target))) != orphan


def test_killed_in_the_middle_of_removing_a_tree(tmp_path: Path) -> None:
    """Killed while remove() deletes a big tree: cleanup() finishes the job."""
    root = tmp_path / "root"
    before = make_base(root)
    with open_sn(root) as sn:
        sn.prepare("a-big", "c-base")
        upper = w.upper_of(sn.stat("a-big"))
    for d in range(10):
        os.makedirs(f"{upper}/d{d}/e")
        for f in range(20):
            Path(f"{upper}/d{d}/e/f{f}").write_bytes(b"x" * f)
    assert run_hook("hook-remove-partial", str(root), "a-big").strip() == "partial"
    orphan = os.path.dirname(upper)
    assert os.path.isdir(orphan)
    with open_sn(root) as sn:
        with pytest.raises(NotFoundError):
            sn.stat("a-big")
        assert_untouched(sn, before)
        sn.cleanup()
        assert not os.path.exists(orphan)
        assert snapshot_dirs(root) == live_ids(sn)


def test_killed_during_commit_usage_walk(tmp_path: Path) -> None:
    """Killed during commit's usage walk: the active stays ACTIVE, intact, committable."""
    root = tmp_path / "root"
    before = make_base(root)
    with open_sn(root) as sn:
        sn.prepare("a-many", "c-base")
        upper = w.upper_of(sn.stat("a-many"))
        before = {i.name: w.upper_of(i) for i in sn.walk()}
    for d in range(3):
        os.mkdir(f"{upper}/d{d}")
        for f in range(500):
            os.close(os.open(f"{upper}/d{d}/f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
    usage = w.tree_usage(upper)
    assert usage[1] == 1_500 + 3 + 1
    out = run_hook("hook-commit", str(root), "c-many", "a-many")
    assert out.strip() == "walking"  # killed by the walk's progress report, inside the walk

    with open_sn(root) as sn:
        info = sn.stat("a-many")
        assert info.kind == Kind.ACTIVE and info.parent == "c-base"
        with pytest.raises(NotFoundError):
            sn.stat("c-many")
        assert_untouched(sn, before)
        assert w.tree_usage(upper) == usage
        sn.commit("c-many", "a-many")
        info = sn.stat("c-many")
        assert info.kind == Kind.COMMITTED and w.upper_of(info) == upper
        assert tuple(sn.usage("c-many")) == usage
        sn.cleanup()
        assert snapshot_dirs(root) == live_ids(sn)
