"""Count a command's device flushes with strace (issue 14's measure of durability cost).

A flush is an ``fsync``, ``fdatasync``, ``syncfs``, ``sync`` or ``msync(MS_SYNC)``,
or a write on a descriptor opened ``O_DSYNC``/``O_SYNC`` (LMDB writes its meta
page through one: each durable LMDB commit is an fdatasync of the data and one
such write, as each bolt commit is two fdatasyncs).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence

_SYSCALLS = (
    "fsync,fdatasync,syncfs,sync,msync,open,openat,openat2,creat,close,"
    "dup,dup2,dup3,write,pwrite64,writev,pwritev,pwritev2"
)
# "1234  name(args) = ret" once strace has joined unfinished and resumed halves.
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}
_FLUSHES = {"fsync", "fdatasync", "syncfs", "sync"}


# A chain of n prepare+commit pairs: argv is root, n, and "1" for sync=True.
CHAIN_SCRIPT = """
import sys, pysnap
root, n, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
with pysnap.OverlaySnapshotter(root, sync=sync) as sn:
    parent = ""
    for i in range(n):
        sn.prepare(f"a{i}", parent)
        sn.commit(f"c{i}", f"a{i}")
        parent = f"c{i}"
"""


def available() -> bool:
    return shutil.which("strace") is not None


def _join_resumed(lines: list[str]) -> list[str]:
    """strace -f splits calls that other threads interrupt; put them back together."""
    pending: dict[str, str] = {}
    out = []
    for line in lines:
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
        elif rest.startswith("<..."):
            head = pending.pop(pid, "")
            out.append(f"{pid} {head}{rest.split('resumed>', 1)[1]}")
        else:
            out.append(f"{pid} {rest}")
    return out


def count(argv: Sequence[str], env: dict[str, str] | None = None) -> collections.Counter[str]:
    """Run ``argv`` under ``strace -f``; flushes by kind ("fsync", "sync write", ...)."""
    with tempfile.TemporaryDirectory(prefix="pysnap-strace-") as d:
        log = os.path.join(d, "trace")
        subprocess.run(
            ["strace", "-f", "-qq", "-e", f"trace={_SYSCALLS}", "-e", "signal=none",
             "-o", log, *argv],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with open(log) as f:
            lines = _join_resumed(f.read().splitlines())
    sync_fds: set[int] = set()
    flushes: collections.Counter[str] = collections.Counter()
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        name, args, ret = m.group(2), m.group(3), int(m.group(4))
        if name in _FLUSHES:
            flushes[name] += 1
        elif name == "msync" and "MS_SYNC" in args:
            flushes["msync"] += 1
        elif name in ("open", "openat", "openat2", "creat") and ret >= 0:
            if re.search(r"\bO_(D)?SYNC\b", args):
                sync_fds.add(ret)
            else:
                sync_fds.discard(ret)
        elif name == "close":
            sync_fds.discard(int(args.split(",")[0]))
        elif name.startswith("dup") and ret >= 0:
            # a duplicate shares the open file, and so its O_DSYNC
            if int(args.split(",")[0]) in sync_fds:
                sync_fds.add(ret)
            else:
                sync_fds.discard(ret)
        elif name in _WRITES and int(args.split(",")[0]) in sync_fds:
            flushes["sync write"] += 1
    return flushes


def per_layer(
    make_argv: Callable[[int], Sequence[str]], small: int, large: int
) -> dict[str, float]:
    """Flushes per layer by kind: the difference between two runs, so opening costs nothing."""
    a, b = count(make_argv(small)), count(make_argv(large))
    kinds = set(a) | set(b)
    out = {k: (b[k] - a[k]) / (large - small) for k in sorted(kinds)}
    out["total"] = sum(out.values())
    return out
