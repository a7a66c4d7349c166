"""The one interrupt harness of the tests: a real SIGINT at a chosen point.

- ``spawn_in_pty`` / ``read_until`` / ``wait_exit``: a command with a
  pseudo-terminal of its own, for progress lines and a typed Ctrl-C.
- ``interrupt_at``: a ``pysnap`` command in a child that stops at a chosen
  point of its run (a Python call, or the return of a C function such as
  ``mkdir``) and waits there; the test then sends it SIGINT. The point is
  reached by what the program does, never by timing.
- ``interrupt_each_call``: KeyboardInterrupt right after the k-th call of a
  function, for k = 1, 2, ... until a run completes (every point covered).
- ``gate_opens``: a hook on the k-th open of chosen directories, run while
  that open waits (fanotify permission events), for code in C that calls no
  Python (the compiled walks): a point reached by what it does, not timing.

Run as a script, this module is that child (see ``interrupt_at``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# A broken child fails the test after this long instead of hanging the suite.
HANG = 60


def pysnap_command() -> list[str]:
    """The installed console script, or the module when it is not on disk."""
    script = Path(sys.executable).with_name("pysnap")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pysnap"]


# ------------------------------------------------------------ a terminal of its own


def spawn_in_pty(
    argv: list[str], *, env: dict[str, str] | None = None, columns: int = 0
) -> tuple[int, int]:
    """Run argv with a new pseudo-terminal as its controlling terminal (``columns``
    wide when given); the child's pid and the terminal's master fd."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: set the size, exec, nothing else
        try:
            if columns:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            os.execve(argv[0], argv, os.environ if env is None else env)
        finally:
            os._exit(127)
    return pid, fd


def read_until(fd: int, pattern: re.Pattern[bytes], buf: bytearray) -> re.Match[bytes] | None:
    """Read the pty into buf until pattern matches or the child closes it."""
    while not (m := pattern.search(buf)):
        ready, _, _ = select.select([fd], [], [], HANG)
        if not ready:
            return None
        try:
            chunk = os.read(fd, 65536)
        except OSError as e:  # EIO: the child closed the terminal
            if e.errno == errno.EIO:
                return None
            raise
        if not chunk:
            return None
        buf += chunk
    return m


def wait_exit(pid: int, fd: int, buf: bytearray) -> int:
    """Drain the terminal to its end into buf, reap the child; its exit code."""
    read_until(fd, re.compile(rb"(?!)"), buf)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------- SIGINT at a chosen point


@dataclass
class Interrupted:
    reached: bool  # False: the run ended before the point (then no signal was sent)
    returncode: int
    stdout: str
    stderr: str


Point = Sequence[tuple[str, str]]  # ("call", qualname) or ("c_return", C function name)


def interrupt_at(
    argv: Sequence[str], point: Point, *, env: dict[str, str] | None = None
) -> Interrupted:
    """Run ``pysnap *argv``; when it has passed every event of ``point`` in order,
    it waits, and gets a SIGINT from here.

    The child waits in a read of a pipe: a SIGINT it does not hold interrupts
    the read at once; one it holds (signals blocked) waits, and the read ends
    when this side closes the pipe after the signal.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    p = subprocess.Popen(
        [sys.executable, __file__, json.dumps(list(point)), str(ready_w), str(go_r), *argv],
        pass_fds=(ready_w, go_r),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(ready_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([ready_r], [], [], HANG)
        reached = bool(ready) and os.read(ready_r, 1) == b"!"
        if reached:
            p.send_signal(signal.SIGINT)
        os.close(go_w)
        out, err = p.communicate(timeout=HANG)
    finally:
        os.close(ready_r)
        if p.poll() is None:
            p.kill()
            p.wait()
    return Interrupted(reached, p.returncode, out, err)


def _child(point: list[list[str]], ready: int, go: int, argv: list[str]) -> None:
    """Run pysnap; stop at the point: say so on ``ready``, wait on ``go``."""
    todo = list(point)

    def hook(frame: Any, event: str, arg: Any) -> None:
        want_event, want_name = todo[0]
        if event != want_event:
            return
        name = frame.f_code.co_qualname if event == "call" else getattr(arg, "__name__", "")
        if name != want_name:
            return
        todo.pop(0)
        if todo:
            return
        sys.setprofile(None)
        os.write(ready, b"!")
        os.read(go, 1)  # SIGINT ends this read with KeyboardInterrupt, or EOF comes

    from pysnap.cli import run

    sys.argv = ["pysnap", *argv]
    sys.setprofile(hook)
    run()


# --------------------------------------------- KeyboardInterrupt after each call


def interrupt_each_call(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    run: Callable[[int], T],
    check: Callable[[T | None], None],
    *,
    most: int = 200,
) -> None:
    """For k = 1, 2, ...: ``owner.name`` raises KeyboardInterrupt right after its
    k-th call while ``run(k)`` runs; then ``check`` sees what that left, with
    run's result, or None when interrupted. Ends after the first run that made
    fewer than k calls (every call was a point); fails past ``most`` points.
    """
    real = getattr(owner, name)
    for k in range(1, most + 1):
        calls = [0]

        def interrupting(*args: Any, calls: list[int] = calls, k: int = k, **kw: Any) -> Any:
            result = real(*args, **kw)
            calls[0] += 1
            if calls[0] == k:
                raise KeyboardInterrupt
            return result

        got: T | None = None
        monkeypatch.setattr(owner, name, interrupting)
        try:
            got = run(k)
        except KeyboardInterrupt:
            pass
        finally:
            monkeypatch.setattr(owner, name, real)
        check(got)
        if calls[0] < k:
            return
    pytest.fail(f"{name} was called more than {most} times")


# ----------------------------------- a hook on the opens of chosen directories

_FAN_CLASS_CONTENT, _FAN_CLOEXEC, _FAN_MARK_ADD = 0x4, 0x1, 0x1
_FAN_OPEN_PERM, _FAN_ONDIR, _FAN_ALLOW = 0x10000, 0x40000000, 0x1
_AT_FDCWD = -100


def gate_opens(
    paths: Sequence[str | os.PathLike[str]], act: Callable[[int], None]
) -> Callable[[], None]:
    """Run ``act(k)`` in a thread of its own while the k-th open (k = 1, 2, ...)
    of any directory in paths waits; that open goes on when act returns.
    Returns the function that ends the gate. Root only.

    Raises:
        OSError: fanotify, or its permission events on directories, unavailable.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    fan = int(libc.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC, os.O_RDONLY))
    if fan < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    for p in paths:
        if (
            libc.fanotify_mark(
                fan, _FAN_MARK_ADD, _FAN_OPEN_PERM | _FAN_ONDIR, _AT_FDCWD, os.fsencode(p)
            )
            != 0
        ):
            err = ctypes.get_errno()
            os.close(fan)
            raise OSError(err, f"fanotify_mark: {os.strerror(err)}", p)
    done = threading.Event()

    def serve() -> None:
        k = 0
        while not done.is_set():
            ready, _, _ = select.select([fan], [], [], 0.05)
            if not ready:
                continue
            data = os.read(fan, 4096)
            while data:
                size, _, _, _, _, efd, _ = struct.unpack("IBBHQii", data[:24])
                k += 1
                try:
                    act(k)
                finally:
                    os.write(fan, struct.pack("iI", efd, _FAN_ALLOW))
                    os.close(efd)
                data = data[size:]

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def stop() -> None:
        done.set()
        t.join()
        os.close(fan)

    return stop


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
