"""The child side of the crash and concurrency tests (run as a script, never imported by a fork).

Each test starts this file with ``subprocess.Popen([sys.executable, __file__, MODE, ...])``,
so a child never inherits an LMDB environment. The tests also import it for the
content helpers (``expected_files``, ``read_tree``, ``tree_usage``).

What a committed snapshot holds follows from its name alone: ``expected_files(name)``.
A child writes exactly that into an ACTIVE upper directory right before
``commit(name, key)``, so a checker needs no journal.

Modes (stdout carries only the lines named here):

``random ROOT RUN SEED SYNC``
    Random prepare / write / commit / view / remove / stat / usage / cleanup on
    ROOT until killed (or MAX_OPS done, then exit 0). Prints ``ready`` once open.
    Keys: ``a-<tok>`` ACTIVE, ``v-<tok>`` VIEW, ``c-<tok>`` COMMITTED (committed
    from ``a-<tok>``); ``<tok>`` starts with RUN, which is unique per run.
``hook-create ROOT KIND KEY PARENT`` / ``hook-mkdtemp ...``
    Create KEY and SIGKILL itself right after the rename of ``new-*`` to
    ``snapshots/<id>`` (resp. right after ``new-*`` is made), inside the write
    transaction. Prints the path first.
``hook-remove ROOT KEY``
    Remove KEY and SIGKILL itself once the record is gone, before its directory is.
``hook-remove-partial ROOT KEY``
    Remove KEY and SIGKILL itself in the middle of removing its directory tree.
``hook-commit ROOT NAME KEY``
    Commit KEY as NAME and SIGKILL itself in the middle of the usage walk.
``concurrency ROOT PROC NOPS SEED SYNC GOFILE``
    Two threads doing NOPS mixed operations each; prints one JSON report.

Exit codes: 0 done, 1 an unexpected exception (traceback on stderr), 3 a hook never fired.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import sys
import threading
import time
import traceback

UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"
MAX_OPS = 100_000
POPULATION = 36  # the random child keeps about this many snapshots alive


# -- content that follows from a name --------------------------------------------------


def expected_files(name: str) -> dict[str, bytes]:
    """The files a committed snapshot called ``name`` holds: {relative path: bytes}."""
    h = hashlib.sha256(name.encode()).digest()
    files: dict[str, bytes] = {}
    for i in range(1 + h[0] % 4):
        sub = ("", "sub/", "sub/deep/")[h[1 + i] % 3]
        data = hashlib.sha256(h + bytes([i])).digest() * (h[16 + i] % 100)  # may be empty
        files[f"{sub}f{i}-{h[8 + i]:02x}"] = data
    return files


def expected_dirs(files: dict[str, bytes]) -> set[str]:
    dirs: set[str] = set()
    for rel in files:
        d = os.path.dirname(rel)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    return dirs


def read_tree(top: str) -> tuple[dict[str, bytes], set[str], list[str]]:
    """(files {rel: bytes}, dirs {rel}, other entries) under ``top``."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    other: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                other.append(os.path.relpath(p, top))
            else:
                dirs.add(os.path.relpath(p, top))
        for name in filenames:
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as f:
                    files[os.path.relpath(p, top)] = f.read()
            else:
                other.append(os.path.relpath(p, top))
    return files, dirs, other


def content_problem(upper: str, name: str) -> str | None:
    """None if ``upper`` holds exactly ``expected_files(name)``, else what differs."""
    want = expected_files(name)
    files, dirs, other = read_tree(upper)
    if files == want and dirs == expected_dirs(want) and not other:
        return None
    missing = sorted(set(want) - set(files))
    extra = sorted(set(files) - set(want))
    changed = sorted(k for k in set(want) & set(files) if want[k] != files[k])
    return (
        f"{upper} ({name}): missing {missing}, extra {extra}, changed {changed}, "
        f"dirs {sorted(dirs)} vs {sorted(expected_dirs(want))}, other {other}"
    )


def tree_usage(top: str) -> tuple[int, int]:
    """(size, inodes) as containerd's fs.DiskUsage counts them: st_blocks*512 per inode."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(top):
        paths = [dirpath] if dirpath == top else []
        paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
        for p in paths:
            st = os.lstat(p)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
    return size, len(seen)


def write_exact(upper: str, name: str) -> None:
    """Make ``upper`` hold exactly ``expected_files(name)`` (whatever it held before)."""
    want = expected_files(name)
    keep_dirs = expected_dirs(want)
    for dirpath, dirnames, filenames in os.walk(upper, topdown=False):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.relpath(p, upper) not in want:
                os.unlink(p)
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if os.path.relpath(p, upper) not in keep_dirs:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    shutil.rmtree(p)
    write_some(upper, name, want)


def write_some(upper: str, name: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = os.path.join(upper, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def upper_of(info: object) -> str:
    return info.labels[UPPERDIR_LABEL]  # type: ignore[attr-defined, no-any-return]


def snapshot_id(upper: str) -> int:
    """The id in ``.../snapshots/<id>/fs``."""
    return int(os.path.basename(os.path.dirname(upper)))


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


# -- random: the child of the random-kill test -----------------------------------------


def run_random(root: str, run: str, seed: int, sync: bool) -> int:
    from pysnap import Kind, OverlaySnapshotter
    from pysnap.errors import FailedPreconditionError

    rng = random.Random(seed)
    sn = OverlaySnapshotter(root, sync=sync, upperdir_label=True)
    print("ready", flush=True)
    # name -> (kind, parent, upper); the only writer of this root is this process.
    snaps: dict[str, tuple[Kind, str, str]] = {
        i.name: (i.kind, i.parent, upper_of(i)) for i in sn.walk()
    }
    counter = 0

    def children(name: str) -> int:
        return sum(1 for _, p, _ in snaps.values() if p == name)

    def of_kind(kind: Kind) -> list[str]:
        return sorted(n for n, (k, _, _) in snaps.items() if k == kind)

    for _ in range(MAX_OPS):
        actives, committed = of_kind(Kind.ACTIVE), of_kind(Kind.COMMITTED)
        crowded = len(snaps) > POPULATION
        ops = ["prepare"] * (1 if crowded else 6) + ["remove"] * (8 if crowded else 3)
        ops += ["stat", "usage"]
        if actives:
            ops += ["write"] * 3 + ["commit"] * 5
        if committed:
            ops += ["view"] * 2 + ["remove_parent"]
        if rng.random() < 0.02:
            ops.append("cleanup")
        op = rng.choice(ops)
        counter += 1
        tok = f"{run}-{counter}-{rng.getrandbits(16):04x}"
        if op == "prepare":
            parent = rng.choice(committed) if committed and rng.random() < 0.8 else ""
            sn.prepare(f"a-{tok}", parent)
            info = sn.stat(f"a-{tok}")
            snaps[info.name] = (info.kind, parent, upper_of(info))
        elif op == "write":
            # Partial writes and junk: only a full write right before commit counts.
            key = rng.choice(actives)
            want = expected_files("c-" + key[2:])
            some = {k: v for k, v in want.items() if rng.random() < 0.5}
            write_some(snaps[key][2], key, some)
            if rng.random() < 0.5:
                write_some(snaps[key][2], key, {f"junk-{tok}": os.urandom(rng.randrange(3000))})
        elif op == "commit":
            key = rng.choice(actives)
            name = "c-" + key[2:]
            _, parent, upper = snaps[key]
            write_exact(upper, name)
            sn.commit(name, key)
            del snaps[key]
            snaps[name] = (Kind.COMMITTED, parent, upper)
        elif op == "view":
            parent = rng.choice(committed)
            sn.view(f"v-{tok}", parent)
            snaps[f"v-{tok}"] = (Kind.VIEW, parent, upper_of(sn.stat(f"v-{tok}")))
        elif op == "remove":
            leaves = [n for n in snaps if children(n) == 0]
            if leaves:
                key = rng.choice(leaves)
                sn.remove(key)
                del snaps[key]
        elif op == "remove_parent":
            parents = [n for n in committed if children(n)]
            if parents:
                try:
                    sn.remove(rng.choice(parents))
                except FailedPreconditionError:
                    pass  # deserved: it has a child
                else:
                    raise AssertionError("removed a snapshot that has a child")
        elif op in ("stat", "usage") and snaps:
            key = rng.choice(sorted(snaps))
            if op == "stat":
                info = sn.stat(key)
                assert (info.kind, info.parent, upper_of(info)) == snaps[key], (info, snaps[key])
            else:
                sn.usage(key)
        elif op == "cleanup":
            sn.cleanup()
    sn.close()
    return 0


# -- hooks: one kill at one dangerous point ---------------------------------------------


def run_hook(mode: str, argv: list[str]) -> int:
    import pysnap.overlay
    from pysnap import OverlaySnapshotter

    root = argv[0]
    snapshots = os.path.join(os.path.abspath(root), "snapshots")
    sn = OverlaySnapshotter(root)

    if mode in ("hook-create", "hook-mkdtemp"):
        kind, key, parent = argv[1:4]
        if mode == "hook-create":
            real_rename = os.rename

            def rename(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
                d = os.fspath(dst)
                is_snap = os.path.dirname(d) == snapshots and os.path.basename(d).isdigit()
                if is_snap:  # mark the new directory, to see later that it was replaced
                    with open(os.path.join(src, "fs", "leftover-marker"), "wb") as f:
                        f.write(b"from the killed create\n")
                real_rename(src, dst, *a, **kw)
                if is_snap:
                    print(d, flush=True)
                    _die()

            os.rename = rename
        else:
            import tempfile

            real_mkdtemp = tempfile.mkdtemp

            def mkdtemp(*a, **kw):  # type: ignore[no-untyped-def]
                path = real_mkdtemp(*a, **kw)
                if os.path.dirname(os.path.abspath(path)) == snapshots:
                    print(path, flush=True)
                    _die()
                return path

            tempfile.mkdtemp = mkdtemp
        (sn.prepare if kind == "prepare" else sn.view)(key, parent)
    elif mode == "hook-remove":

        def remove_dirs(self, paths):  # type: ignore[no-untyped-def]
            print(json.dumps(paths), flush=True)
            _die()

        OverlaySnapshotter._remove_dirs = remove_dirs  # type: ignore[method-assign]
        sn.remove(argv[1])
    elif mode == "hook-remove-partial":
        # Let the real (compiled) removal empty one subdirectory of the upper,
        # then die while it opens the next one.
        from interrupts import gate_opens

        def die_at_second(k: int) -> None:
            if k == 2:
                print("partial", flush=True)
                _die()

        # Every upper's subdirectories: remove opens only its own tree's.
        subdirs = [
            os.path.join(snapshots, d, "fs", n)
            for d in os.listdir(snapshots)
            if os.path.isdir(os.path.join(snapshots, d, "fs"))
            for n in os.listdir(os.path.join(snapshots, d, "fs"))
        ]
        gate_opens([p for p in subdirs if os.path.isdir(p)], die_at_second)
        sn.remove(argv[1])
    elif mode == "hook-commit":
        name, key = argv[1:3]
        real_du = pysnap.overlay.du

        class Du:  # the module, with a disk_usage that dies in the middle of its walk
            def __getattr__(self, attr):  # type: ignore[no-untyped-def]
                return getattr(real_du, attr)

            @staticmethod
            def disk_usage(*roots, **kw):  # type: ignore[no-untyped-def]
                def progress(*_):  # type: ignore[no-untyped-def]
                    print("walking", flush=True)
                    _die()

                # Report often, so that the first report lands well inside the walk.
                try:
                    real_du.disk_usage(
                        *roots, **{**kw, "progress": progress, "progress_every": 500}
                    )
                except TypeError:  # no such arguments: die right after the walk instead
                    real_du.disk_usage(*roots, **kw)
                print("walked", flush=True)
                _die()

        pysnap.overlay.du = Du()  # type: ignore[assignment]
        sn.commit(name, key)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    print("hook never fired", file=sys.stderr)
    return 3


# -- concurrency: one of the processes of the concurrency test --------------------------


class Thread:
    """One thread's share: its own keys (prefix), plus the shared parents and races."""

    def __init__(self, sn, proc: int, t: int, nops: int, seed: int, shared, races: int):  # type: ignore[no-untyped-def]
        self.sn = sn
        self.prefix = f"p{proc}t{t}-"
        self.nops = nops
        self.rng = random.Random(seed * 100 + proc * 10 + t)
        self.shared = list(shared)
        self.races = races
        self.live: dict[str, tuple[object, str]] = {}  # own name -> (Kind, parent)
        self.won: dict[str, tuple[int, str]] = {}  # race snapshots it made: (kind, parent)
        self.expected: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.ops: collections.Counter[str] = collections.Counter()
        self.n = 0

    def key(self, kind: str) -> str:
        self.n += 1
        return f"{self.prefix}{kind}{self.n}"

    def check_dir(self, key: str) -> None:
        """A create just returned: its directory must be there, whatever cleanup() runs."""
        from pysnap import Kind

        info = self.sn.stat(key)
        upper = upper_of(info)
        assert os.path.isdir(upper), f"{key}: upper dir {upper} missing right after create"
        if info.kind == Kind.ACTIVE:
            work = os.path.join(os.path.dirname(upper), "work")
            assert os.path.isdir(work), f"{key}: {work} missing right after create"

    def own(self, kind: object) -> list[str]:
        return sorted(n for n, (k, _) in self.live.items() if k == kind)

    def step(self) -> None:
        from pysnap import Kind
        from pysnap.errors import AlreadyExistsError, FailedPreconditionError

        sn, rng = self.sn, self.rng
        actives, committed = self.own(Kind.ACTIVE), self.own(Kind.COMMITTED)
        ops = ["prepare"] * 4 + ["view", "stat", "walk", "usage", "cleanup", "remove"]
        ops += ["remove"] * (3 if len(self.live) > 12 else 0)
        ops += ["race_prepare", "remove_shared", "mounts_committed"]
        if actives:
            ops += ["write"] * 2 + ["commit"] * 3 + ["race_commit"]
        op = rng.choice(ops)
        self.ops[op] += 1
        parents = ["", *self.shared, *committed]
        if op == "prepare":
            key, parent = self.key("a"), rng.choice(parents)
            sn.prepare(key, parent)
            self.live[key] = (Kind.ACTIVE, parent)
            self.check_dir(key)
            write_exact(upper_of(sn.stat(key)), "c-" + key)
        elif op == "view":
            key, parent = self.key("v"), rng.choice(self.shared + committed)
            sn.view(key, parent)
            self.live[key] = (Kind.VIEW, parent)
            self.check_dir(key)
        elif op == "write":
            key = rng.choice(actives)
            write_some(upper_of(sn.stat(key)), key, {"scribble": os.urandom(100)})
        elif op == "commit":
            key = rng.choice(actives)
            name = self.key("c")
            write_exact(upper_of(sn.stat(key)), name)
            sn.commit(name, key)
            self.live[name] = (Kind.COMMITTED, self.live.pop(key)[1])
        elif op == "race_commit":
            # Every thread commits to the same few names: one wins each, the rest
            # get AlreadyExistsError and keep their active. Only actives on a
            # shared or no parent: the winner belongs to no thread, and an own
            # parent must stay removable.
            ready = [k for k in actives if self.live[k][1] in ["", *self.shared]]
            if not ready:
                return
            key = rng.choice(ready)
            name = f"race-c{rng.randrange(self.races)}"
            write_exact(upper_of(sn.stat(key)), name)
            try:
                sn.commit(name, key)
            except AlreadyExistsError:
                self.expected["commit:AlreadyExistsError"] += 1
            else:
                self.won[name] = (int(Kind.COMMITTED), self.live.pop(key)[1])
        elif op == "race_prepare":
            key = f"race-a{rng.randrange(self.races)}"
            parent = rng.choice(self.shared)
            try:
                sn.prepare(key, parent)
            except AlreadyExistsError:
                self.expected["prepare:AlreadyExistsError"] += 1
            else:
                self.won[key] = (int(Kind.ACTIVE), parent)
                self.check_dir(key)
        elif op == "remove":
            leaves = [n for n in self.live if not any(p == n for _, p in self.live.values())]
            if leaves:
                key = rng.choice(leaves)
                sn.remove(key)
                del self.live[key]
        elif op == "remove_shared":
            # Each shared parent has a pinned child the test made: this deserves
            # FailedPreconditionError, always.
            try:
                sn.remove(rng.choice(self.shared))
            except FailedPreconditionError:
                self.expected["remove:FailedPreconditionError"] += 1
            else:
                raise AssertionError("removed a shared parent that has children")
        elif op == "mounts_committed":
            name = rng.choice(self.shared + committed)
            try:
                sn.mounts(name)
            except FailedPreconditionError:
                self.expected["mounts:FailedPreconditionError"] += 1
            else:
                raise AssertionError(f"mounts() of committed {name} did not fail")
        elif op == "stat" and self.live:
            key = rng.choice(sorted(self.live))
            info = sn.stat(key)
            assert (info.kind, info.parent) == self.live[key], (info, self.live[key])
        elif op == "walk":
            got = sorted(i.name for i in sn.walk(f'name~="^{self.prefix}"'))
            assert got == sorted(self.live), f"walk: {got} != {sorted(self.live)}"
        elif op == "usage" and self.live:
            key = rng.choice(sorted(self.live))
            usage = sn.usage(key)
            if self.live[key][0] == Kind.COMMITTED:
                assert tuple(usage) == tree_usage(upper_of(sn.stat(key))), (key, usage)
            else:
                if self.live[key][0] == Kind.VIEW:
                    assert tuple(usage) == (0, 0), (key, usage)
                assert sn.mounts(key), key
        elif op == "cleanup":
            sn.cleanup()

    def run(self) -> None:
        for _ in range(self.nops):
            try:
                self.step()
            except Exception:
                self.unexpected.append(traceback.format_exc())
                if len(self.unexpected) > 5:
                    return


def run_concurrency(root: str, proc: int, nops: int, seed: int, sync: bool, gofile: str) -> int:
    from pysnap import OverlaySnapshotter

    sn = OverlaySnapshotter(root, sync=sync, upperdir_label=True)
    shared = sorted(i.name for i in sn.walk('name~="^shared-",kind==committed'))
    races = 4
    threads = [Thread(sn, proc, t, nops, seed, shared, races) for t in range(2)]
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(gofile):  # start all processes at once
        if time.monotonic() > deadline:
            print("no go file", file=sys.stderr)
            return 1
        time.sleep(0.002)
    workers = [threading.Thread(target=t.run) for t in threads]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    report = {
        "live": {n: [int(k), p] for t in threads for n, (k, p) in t.live.items()},
        "won": {n: [k, p] for t in threads for n, (k, p) in t.won.items()},
        "expected": dict(sum((t.expected for t in threads), collections.Counter())),
        "ops": dict(sum((t.ops for t in threads), collections.Counter())),
        "unexpected": [u for t in threads for u in t.unexpected],
    }
    sn.close()
    print(json.dumps(report), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode = argv[0]
    try:
        if mode == "random":
            root, run, seed, sync = argv[1:5]
            return run_random(root, run, int(seed), sync == "1")
        if mode == "concurrency":
            root, proc, nops, seed, sync, gofile = argv[1:7]
            return run_concurrency(root, int(proc), int(nops), int(seed), sync == "1", gofile)
        return run_hook(mode, argv[1:])
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
