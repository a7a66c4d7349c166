"""What the ``pysnap`` subcommands print: sizes, times, tables, JSON, progress, errors.

Data goes to stdout (a table, or one JSON document with ``--json``); errors go
to stderr (as JSON under ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from ..errors import kind_of
from ..types import Info, Mount, Usage

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141

# Progress redraws at most this often (seconds): enough to look alive, few
# enough writes that a fast walk is not slowed by its own display.
PROGRESS_INTERVAL = 0.1


class UsageError(Exception):
    """Arguments that cannot work, found by the parser or by a subcommand: exit 2."""


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a path's bytes that are not UTF-8 come out as ``\\xNN``.

    Such bytes reach Python as lone surrogates (PEP 383), which a strict UTF-8
    stream cannot write and no JSON reader accepts.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _printable_doc(doc: Any) -> Any:
    if isinstance(doc, str):
        return printable(doc)
    if isinstance(doc, dict):
        return {printable(k): _printable_doc(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_printable_doc(v) for v in doc]
    return doc


class _ClosedStream:
    """Stands for a standard stream closed when pysnap started (``pysnap ls >&-``):
    using it fails as writing to a closed descriptor does (EBADF), as cat reports."""

    def __init__(self, name: str) -> None:
        self.name = f"<{name}>"

    def _closed(self, *args: object) -> Any:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF), self.name)

    write = read = readinto = readline = fileno = _closed

    @property
    def buffer(self) -> _ClosedStream:
        return self

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def guard_standard_streams() -> None:
    """Put /dev/null on any of descriptors 0-2 that is closed, so no file pysnap opens
    lands there (lmdb's lock file as stderr), and stand in for its Python stream:
    stdin and stdout refuse use; stderr drops what it is given (the exit code tells)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if null != fd:
            os.dup2(null, fd, inheritable=False)
            os.close(null)
        stream: Any = open(fd, "w", closefd=False) if fd == 2 else _ClosedStream(name)
        setattr(sys, name, stream)


def human_size(n: int) -> str:
    """Bytes as ctr prints them (progress.Bytes, ``%02.1f``): ``512.0 B``, ``1.5 GiB``."""
    value = float(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
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
    return printable(shlex.join(words))


def table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Left-aligned columns, two spaces apart, like ctr's tabwriter."""
    if not rows:
        return
    rows = [[printable(c) for c in r] for r in rows]
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
    """One JSON document on stdout, valid UTF-8 whatever the paths in it."""
    json.dump(_printable_doc(doc), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


class Progress:
    """Files and bytes so far on one terminal line of ``stream``, redrawn in place.

    The first call draws at once, later ones at most every ``interval``
    seconds. The line is cut to the terminal's width (read at each draw: a
    wider line would wrap, and ``\r`` would then redraw only its last row).
    ``clear()`` wipes the line so the data that follows starts clean.
    """

    def __init__(self, stream: IO[str], label: str, interval: float = PROGRESS_INTERVAL) -> None:
        self.stream = stream
        self.label = printable(label)
        self.interval = interval
        self.shown = False
        self._last = 0.0

    def __call__(self, entries: int, nbytes: int) -> None:
        now = time.monotonic()
        if self.shown and now - self._last < self.interval:
            return
        self._last = now
        self.shown = True
        counts = f": {entries:,} files, {human_size(nbytes)}"
        self.stream.write(f"\r\x1b[K{fit(self.label, counts, self._width())}")
        self.stream.flush()

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns or 80  # 0: a terminal that never said its size

    def clear(self) -> None:
        if self.shown:
            self.shown = False
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def fit(label: str, tail: str, width: int) -> str:
    """``label + tail`` in fewer than ``width`` columns (the last one stays free, so the
    cursor never wraps): the start of the label gives way first, then the tail's end."""
    room = width - 1 - len(tail)
    if len(label) > room:
        label = "\u2026" + label[len(label) - room + 1 :] if room > 1 else ""
    return (label + tail)[: max(width - 1, 0)]


_progress: Progress | None = None  # the live display, cleared on error or Ctrl-C


def progress_for(label: str) -> Progress | None:
    """A progress display on stderr when stderr is a terminal that can redraw, else None."""
    global _progress
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":  # no \x1b[K there
        return None
    _progress = Progress(sys.stderr, label)
    return _progress


def clear_progress() -> None:
    global _progress
    if _progress is not None:
        with contextlib.suppress(OSError, ValueError):
            _progress.clear()
        _progress = None


def error_text(e: BaseException) -> str:
    """``str(e)``, with an OSError's file names :func:`printable` (``str`` would
    show a byte 0xff of a name as ``\\udcff``)."""
    if not isinstance(e, OSError) or e.filename is None or e.strerror is None:
        return str(e)
    names = [f"'{printable(os.fsdecode(n))}'" for n in (e.filename, e.filename2) if n is not None]
    return f"[Errno {e.errno}] {e.strerror}: {' -> '.join(names)}"


def report(args: argparse.Namespace, command: str, e: BaseException, hint: str = "") -> int:
    """Report a SnapshotError or OSError by the one table (errors.kind_of); its exit code."""
    kind = kind_of(e)
    return fail(args, kind.code, f"{command}: {error_text(e)}{hint}", kind.exit_code)


def fail(args: argparse.Namespace | None, code: str, message: str, exit_code: int) -> int:
    """Report one error on stderr (JSON under --json) and give its exit code."""
    clear_progress()
    message = printable(message)
    with contextlib.suppress(OSError, ValueError):  # stderr closed: the exit code remains
        if args is not None and getattr(args, "json", False):
            doc = {"error": {"code": code, "message": message, "exit_code": exit_code}}
            sys.stderr.write(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            sys.stderr.write(f"pysnap: {message}\n")
    return exit_code
