"""Running test code as an unprivileged user (root ignores permission bits)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable


def as_nobody(fn: Callable[[], object]) -> object:
    """Run fn in a forked child that dropped to uid/gid 65534; its result or exception."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                out: object = ("ok", fn())
            except BaseException as e:
                out = ("err", e)
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value


def unprivileged(fn: Callable[[], object]) -> object:
    """fn as uid 65534 when we are root, else fn as we are."""
    return as_nobody(fn) if os.geteuid() == 0 else fn()
