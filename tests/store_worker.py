"""The child side of the close() race and fork tests (run as a script by subprocess).

A crash (SIGBUS, SIGSEGV) must show as the script's signal exit, not kill
pytest, so everything that could crash runs here. Exit code 0: all went as
expected; 1: an unexpected exception (traceback on stderr) or a wrong answer.

``close-race ROOT ROUNDS THREADS``
    ROUNDS times: open ROOT (sync=False), start THREADS threads hammering
    stat / walk / prepare / commit / remove on a committed parent, close()
    once every thread has done a few operations. Each thread must end with
    ClosedError, never another error (a false NotFoundError for the parent).
``fork ROOT HOW``
    Open ROOT, work, fork. The child opens ROOT itself, works, and leaves by
    HOW: ``exit`` (sys.exit with the inherited snapshotter still referenced),
    ``gc`` (drops it, gc.collect(), sys.exit), ``close`` (closes it, then
    sys.exit); ``exit-unopened``: sys.exit without opening ROOT at all. The
    parent then does 1,000 reads and 1,000 writes.
``mp ROOT START``
    multiprocessing with the START method (fork, spawn): a child opens ROOT
    and prepares a key while the parent holds ROOT open and keeps working.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import threading

from pysnap import OverlaySnapshotter
from pysnap.errors import ClosedError, SnapshotError


def _hammer(sn: OverlaySnapshotter, tag: str, started: threading.Barrier, out: list[str]) -> None:
    n = 0
    try:
        while True:
            key = f"{tag}-{n}"
            sn.prepare(key, "base")
            sn.stat("base")
            sn.walk("kind==committed")
            if n % 2:
                sn.commit(f"c-{key}", key)
                sn.remove(f"c-{key}")
            else:
                sn.remove(key)
            n += 1
            if n == 3:
                started.wait()
    except ClosedError:
        out.append("closed")
    except BaseException as e:  # a wrong answer or a wrong kind: the test fails
        out.append(f"{type(e).__name__}: {e}")
        if n < 3:
            started.abort()


def close_race(root: str, rounds: int, threads: int) -> int:
    with OverlaySnapshotter(root, sync=False) as sn:
        sn.prepare("a-base")
        sn.commit("base", "a-base")
    for r in range(rounds):
        sn = OverlaySnapshotter(root, sync=False)
        started = threading.Barrier(threads + 1)
        out: list[str] = []
        workers = [
            threading.Thread(target=_hammer, args=(sn, f"r{r}t{t}", started, out))
            for t in range(threads)
        ]
        for t in workers:
            t.start()
        try:
            started.wait()
        except threading.BrokenBarrierError:
            pass
        sn.close()
        for t in workers:
            t.join()
        if out != ["closed"] * threads:
            print(f"round {r}: {out}", file=sys.stderr)
            return 1
        try:
            sn.stat("base")
        except ClosedError:
            pass
        else:
            print("stat after close() answered", file=sys.stderr)
            return 1
    return 0


def _work(sn: OverlaySnapshotter, tag: str, n: int) -> None:
    for i in range(n):
        sn.prepare(f"{tag}-{i}")
        sn.stat(f"{tag}-{i}")
        sn.remove(f"{tag}-{i}")


def fork(root: str, how: str) -> int:
    sn = OverlaySnapshotter(root, sync=False)
    _work(sn, "before", 5)  # cached read transactions, reader slots in use
    pid = os.fork()
    if pid == 0:
        if how != "exit-unopened":
            with OverlaySnapshotter(root, sync=False) as own:
                _work(own, "child", 20)
                try:  # a second open in one process stays refused (LMDB's rule)
                    OverlaySnapshotter(root)
                except SnapshotError as e:
                    if "already open" not in str(e):
                        raise
                else:
                    sys.exit("opened twice in one process")
        try:
            sn.stat("x")
        except ClosedError:
            pass  # the inherited one is refused, never used
        if how == "gc":
            del sn
            gc.collect()
        elif how == "close":
            sn.close()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"child: {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
        return 1
    for i in range(1000):
        sn.prepare(f"after-{i}")
        sn.stat(f"after-{i}")
    if len(sn.walk()) != 1000:
        return 1
    sn.close()
    return 0


def _mp_child(root: str) -> None:
    with OverlaySnapshotter(root) as sn:
        sn.prepare("from-child")


def mp(root: str, start: str) -> int:
    sn = OverlaySnapshotter(root)
    _work(sn, "before", 5)
    p = multiprocessing.get_context(start).Process(target=_mp_child, args=(root,))
    p.start()
    p.join()
    if p.exitcode != 0:
        print(f"child: {p.exitcode}", file=sys.stderr)
        return 1
    sn.stat("from-child")
    _work(sn, "after", 100)
    sn.close()
    return 0


if __name__ == "__main__":
    mode, root, *rest = sys.argv[1:]
    if mode == "close-race":
        sys.exit(close_race(root, int(rest[0]), int(rest[1])))
    if mode == "fork":
        sys.exit(fork(root, rest[0]))
    if mode == "mp":
        sys.exit(mp(root, rest[0]))
    sys.exit(f"unknown mode {mode!r}")
