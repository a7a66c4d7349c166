"""``pysnap du``: the disk usage of any directories, a fast ``du -s``."""

from __future__ import annotations

import argparse
import sys

from ..types import Usage
from ._common import AddCommand
from ._output import (
    EXIT_OK,
    clear_progress,
    print_json,
    progress_for,
    report,
    table,
    usage_rows,
)

# du asks for a progress call every this many inodes; the progress display's
# interval decides which calls draw. (usage() walks with the snapshotter's default.)
DU_PROGRESS_EVERY = 4096


def register(add: AddCommand) -> None:
    p = add("du", cmd_du, "disk usage of directories (a fast du -s)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")


def cmd_du(args: argparse.Namespace) -> int:
    """Measure each path; like GNU du, what cannot be read is reported and left out
    (a directory without permission; a path that fails whole), the rest still
    prints, and the exit code is the first failure's."""
    from snapcore.du import disk_usage

    code = EXIT_OK
    results: list[tuple[str, Usage]] = []
    for path in args.paths:
        progress = progress_for(f"du {path}")
        unread: list[OSError] = []
        try:
            if progress is None:
                size, inodes = disk_usage(path, errors=unread)
            else:
                size, inodes = disk_usage(
                    path, progress=progress, progress_every=DU_PROGRESS_EVERY, errors=unread
                )
        except OSError as e:
            unread.append(e)
            size = -1
        finally:
            clear_progress()
        for error in unread:
            failed = report(args, args.command, error)
            code = code or failed  # every failure reported; the first one's code
        if size >= 0:
            results.append((path, Usage(size, inodes)))
    if args.json:
        print_json([{"path": p, "size": u.size, "inodes": u.inodes} for p, u in results])
    elif results:
        table(usage_rows("PATH", results, args.bytes), sys.stdout)
    return code
