"""What the ``pysnap`` subcommands print: sizes, times, tables, JSON, progress, errors.

Data goes to stdout (a table, or one JSON document with ``--json``); errors go
to stderr (as JSON under ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from ..types import Info, Mount, Usage

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141

# Progress redraws at most this often (seconds): enough to look alive, few
# enough writes that a fast walk is not slowed by its own display.
PROGRESS_INTERVAL = 0.1


def human_size(n: int) -> str:
    """Bytes as ctr prints them: ``512 B``, ``4.0 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    value /= 1024
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:.1f} {units[i]}"


def size_text(n: int, raw: bool) -> str:
    """``n`` bytes as digits (``-b``) or as :func:`human_size`."""
    return str(n) if raw else human_size(n)


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC (``2024-05-01T12:00:00.123456789Z``)."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{stamp}.{frac:09d}Z" if frac else f"{stamp}Z"


def snapshot_json(info: Info) -> dict[str, Any]:
    """An Info as the JSON object every command prints."""
    return {
        "name": info.name,
        "kind": str(info.kind),
        "parent": info.parent,
        "labels": dict(info.labels),
        "created": rfc3339(info.created_ns),
        "updated": rfc3339(info.updated_ns),
    }


def mount_json(m: Mount, target: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": m.type, "source": m.source}
    if target is not None:
        obj["target"] = target
    obj["options"] = list(m.options)
    return obj


def mount_command(m: Mount, target: str) -> str:
    """The mount(8) command for one Mount, quoted for a POSIX shell (as ctr prints)."""
    words = ["mount", "-t", m.type, m.source, target]
    if m.options:
        words += ["-o", ",".join(m.options)]
    return shlex.join(words)


def table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Left-aligned columns, two spaces apart, like ctr's tabwriter."""
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        out.write("  ".join(cells).rstrip() + "\n")


def usage_rows(head: str, items: Sequence[tuple[str, Usage]], raw: bool) -> list[list[str]]:
    """The rows of a usage table: ``head``, SIZE, INODES."""
    rows = [[head, "SIZE", "INODES"]]
    rows += [[name, size_text(u.size, raw), str(u.inodes)] for name, u in items]
    return rows


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


class Progress:
    """Files and bytes so far on one terminal line of ``stream``, redrawn in place.

    The first call draws at once, later ones at most every ``interval``
    seconds. ``clear()`` wipes the line so the data that follows starts clean.
    """

    def __init__(self, stream: IO[str], label: str, interval: float = PROGRESS_INTERVAL) -> None:
        self.stream = stream
        self.label = label
        self.interval = interval
        self.shown = False
        self._last = 0.0

    def __call__(self, entries: int, nbytes: int) -> None:
        now = time.monotonic()
        if self.shown and now - self._last < self.interval:
            return
        self._last = now
        self.shown = True
        self.stream.write(f"\r\x1b[K{self.label}: {entries:,} files, {human_size(nbytes)}")
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.shown = False
            self.stream.write("\r\x1b[K")
            self.stream.flush()


_progress: Progress | None = None  # the live display, cleared on error or Ctrl-C


def progress_for(label: str) -> Progress | None:
    """A progress display on stderr when stderr is a terminal, else None."""
    global _progress
    if not sys.stderr.isatty():
        return None
    _progress = Progress(sys.stderr, label)
    return _progress


def clear_progress() -> None:
    global _progress
    if _progress is not None:
        with contextlib.suppress(OSError, ValueError):
            _progress.clear()
        _progress = None


def fail(args: argparse.Namespace | None, code: str, message: str, exit_code: int) -> int:
    """Report one error on stderr (JSON under --json) and give its exit code."""
    clear_progress()
    if args is not None and getattr(args, "json", False):
        doc = {"error": {"code": code, "message": message, "exit_code": exit_code}}
        sys.stderr.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"pysnap: {message}\n")
    return exit_code
