"""Who owns a piece of unfinished work, and whether that owner still runs.

Work that must outlive nothing but its process (an unpack's ``extract-*``
snapshots, a blob being copied in) is tagged with its owner: the boot id, the
pid and the pid's start time (so a pid reused after a reboot or a restart is
not taken for the owner), and its pid namespace. The next run removes what a
dead owner left. An owner in another pid namespace (a container sharing the
root) cannot be looked up here, so it counts as running: what it leaves is
removed by a run in its own namespace, or by hand.
"""

from __future__ import annotations

import functools
import os

__all__ = ["Owner", "current"]


@functools.cache
def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


@functools.cache
def _pid_namespace() -> str:
    # A process never changes its own pid namespace (unshare moves only children).
    return str(os.stat("/proc/self/ns/pid").st_ino)


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


class Owner:
    """A process, named by boot id, pid, start time and pid namespace: ``str()`` is its token."""

    __slots__ = ("boot_id", "pid", "pid_ns", "start")

    def __init__(self, boot_id: str, pid: int, start: str, pid_ns: str | None = None) -> None:
        self.boot_id, self.pid, self.start, self.pid_ns = boot_id, pid, start, pid_ns

    def __str__(self) -> str:
        token = f"{self.boot_id}.{self.pid}.{self.start}"
        return token if self.pid_ns is None else f"{token}.{self.pid_ns}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        """The owner a token names, or None for a token that is not one.

        A token of three parts (before the namespace was kept) is of this namespace.
        """
        parts = token.split(".")
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3] if len(parts) == 4 else None)

    def alive(self) -> bool:
        """Whether this process may still run: same boot, same pid, same start time;
        in another pid namespace, always (its pids are not ours to look up)."""
        if self.boot_id != _boot_id():
            return False
        if self.pid_ns is not None and self.pid_ns != _pid_namespace():
            return True
        return _start_time(self.pid) == self.start


def current() -> Owner:
    """This process (asked afresh each time: a forked child is its own owner)."""
    pid = os.getpid()
    start = _start_time(pid)
    assert start is not None  # we are running
    return Owner(_boot_id(), pid, start, _pid_namespace())
