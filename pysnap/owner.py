"""Who owns a piece of unfinished work, and whether that owner still runs.

Work that must outlive nothing but its process (an unpack's ``extract-*``
snapshots, a blob being copied in) is tagged with its owner: the boot id, the
pid and the pid's start time (so a pid reused after a reboot or a restart is
not taken for the owner). The next run removes what a dead owner left.
"""

from __future__ import annotations

import functools
import os

__all__ = ["Owner", "current"]


@functools.cache
def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


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
    """A process, named by boot id, pid and start time: ``str()`` is its token."""

    __slots__ = ("boot_id", "pid", "start")

    def __init__(self, boot_id: str, pid: int, start: str) -> None:
        self.boot_id, self.pid, self.start = boot_id, pid, start

    def __str__(self) -> str:
        return f"{self.boot_id}.{self.pid}.{self.start}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        """The owner a token names, or None for a token that is not one."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def alive(self) -> bool:
        """Whether this process still runs (same boot, same pid, same start time)."""
        return self.boot_id == _boot_id() and _start_time(self.pid) == self.start


def current() -> Owner:
    """This process (asked afresh each time: a forked child is its own owner)."""
    pid = os.getpid()
    start = _start_time(pid)
    assert start is not None  # we are running
    return Owner(_boot_id(), pid, start)
