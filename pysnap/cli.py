"""The ``pysnap`` command: ``ctr snapshots`` for a pysnap root.

Data goes to stdout (a table, or one JSON document with ``--json``); errors go
to stderr (as JSON under ``--json``). Exit codes (borg's scheme): 0 ok,
1 unexpected, 2 usage, 3-12 the error kinds of :mod:`pysnap.errors` (its
table, read through ``errors.kind_of``: 3 not found, 4 already exists,
5 failed precondition, 6 invalid argument, 7 an ``OSError``, 8 closed,
9 corrupt store, 10 map full, 12 unimplemented), 130 interrupted (Ctrl-C),
141 stdout closed early (SIGPIPE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from . import __version__
from .errors import SnapshotError, kind_of
from .types import Info, Kind, Mount, Usage

if TYPE_CHECKING:
    from .overlay import OverlaySnapshotter

DEFAULT_ROOT = "/var/lib/pysnap"
EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141

# Progress redraws at most this often (seconds): enough to look alive, few
# enough writes that a fast walk is not slowed by its own display.
PROGRESS_INTERVAL = 0.1
# du asks for a progress call every this many inodes; the time limit above
# decides which calls draw. (usage() walks with the snapshotter's default.)
DU_PROGRESS_EVERY = 4096

Handler = Callable[[argparse.Namespace], int | None]


# ---------------------------------------------------------------- formatting


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


def _progress_for(label: str) -> Progress | None:
    """A progress display on stderr when stderr is a terminal, else None."""
    global _progress
    if not sys.stderr.isatty():
        return None
    _progress = Progress(sys.stderr, label)
    return _progress


def _clear_progress() -> None:
    global _progress
    if _progress is not None:
        with contextlib.suppress(OSError, ValueError):
            _progress.clear()
        _progress = None


# ------------------------------------------------------------------- parsing


def _label_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} is not KEY=VALUE")
    return key, value


def _labels(pairs: Sequence[tuple[str, str]] | None) -> dict[str, str]:
    # The last value of a repeated key wins (ctr's LabelArgs), then "" drops it.
    return {k: v for k, v in dict(pairs or ()).items() if v}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pysnap`` (global options, then one subcommand)."""
    root_default = os.environ.get("PYSNAP_ROOT") or DEFAULT_ROOT
    parser = argparse.ArgumentParser(
        prog="pysnap",
        description="Manage overlay snapshots: containerd's snapshotter model, from the shell.",
        epilog="Exit codes: 0 ok, 1 unexpected, 2 usage, 3 not found, 4 already exists, "
        "5 failed precondition, 6 invalid argument, 7 OS error, 8 closed, 9 corrupt store, "
        "10 map full, 12 unimplemented, 130 interrupted.",
    )
    parser.add_argument(
        "--root",
        default=root_default,
        help=f"snapshotter root (default: $PYSNAP_ROOT or {DEFAULT_ROOT}; now {root_default})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--version", action="version", version=f"pysnap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # --json is accepted after the subcommand too; SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")

    def add(name: str, func: Handler, help: str, aliases: Sequence[str] = ()) -> Any:
        p = sub.add_parser(
            name, help=help, description=help, aliases=list(aliases), parents=[common]
        )
        p.set_defaults(func=func)
        return p

    def label_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--label",
            action="append",
            type=_label_arg,
            metavar="KEY=VALUE",
            help="a label for the snapshot (repeatable)",
        )

    p = add("prepare", cmd_prepare, "create an active snapshot (writable) on PARENT")
    p.add_argument("key")
    p.add_argument("parent", nargs="?", default="")
    label_option(p)
    p.add_argument("--target", help="print the mount commands for TARGET")

    p = add("view", cmd_view, "create a read-only view of PARENT")
    p.add_argument("key")
    p.add_argument("parent", nargs="?", default="")
    label_option(p)
    p.add_argument("--target", help="print the mount commands for TARGET")

    p = add("commit", cmd_commit, "commit active snapshot KEY as NAME")
    p.add_argument("name")
    p.add_argument("key")
    label_option(p)

    p = add("rm", cmd_rm, "remove snapshots", aliases=("remove", "delete", "del"))
    p.add_argument("keys", nargs="+", metavar="KEY")

    p = add("ls", cmd_ls, "list snapshots matching any FILTER (containerd syntax)", ("list",))
    p.add_argument("filters", nargs="*", metavar="FILTER")

    p = add("info", cmd_info, "show one snapshot")
    p.add_argument("key")

    p = add("usage", cmd_usage, "disk usage of snapshots (all when no KEY)")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")

    p = add("mounts", cmd_mounts, "print the mount commands for snapshot KEY at TARGET")
    p.add_argument("target")
    p.add_argument("key")

    p = add("mount", cmd_mount, "mount snapshot KEY at TARGET")
    p.add_argument("key")
    p.add_argument("target")

    p = add("unmount", cmd_unmount, "unmount TARGET", ("umount",))
    p.add_argument("target")
    p.add_argument("-l", "--lazy", action="store_true", help="detach (MNT_DETACH)")

    p = add("label", cmd_label, "set labels (KEY=VALUE) or delete them (KEY=) on a snapshot")
    p.add_argument("key")
    p.add_argument("labels", nargs="*", type=_label_arg, metavar="KEY=VALUE")

    add("tree", cmd_tree, "show snapshots as a forest of parents and children")
    add("cleanup", cmd_cleanup, "remove directories that no snapshot owns")

    p = add("du", cmd_du, "disk usage of directories (a fast du -s)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")

    add("demo", cmd_demo, "build, mount and measure three layers on a temporary root")
    return parser


# ------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _snapshotter(args: argparse.Namespace) -> Iterator[OverlaySnapshotter]:
    from .overlay import OverlaySnapshotter  # imported late: `du` needs only snapcore

    with OverlaySnapshotter(args.root) as sn:
        yield sn


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _size(n: int, raw: bool) -> str:
    return str(n) if raw else human_size(n)


def _usage_rows(head: str, items: Sequence[tuple[str, Usage]], raw: bool) -> list[list[str]]:
    rows = [[head, "SIZE", "INODES"]]
    rows += [[name, _size(u.size, raw), str(u.inodes)] for name, u in items]
    return rows


# ------------------------------------------------------------------ commands


def _create(args: argparse.Namespace, kind: Kind) -> None:
    labels = _labels(args.label)
    with _snapshotter(args) as sn:
        if kind == Kind.VIEW:
            mounts = sn.view(args.key, parent=args.parent, labels=labels)
        else:
            mounts = sn.prepare(args.key, parent=args.parent, labels=labels)
        info = sn.stat(args.key)
    if args.json:
        doc = snapshot_json(info)
        doc["mounts"] = [mount_json(m, args.target) for m in mounts]
        _print_json(doc)
    elif args.target:
        for m in mounts:
            print(mount_command(m, args.target))


def cmd_prepare(args: argparse.Namespace) -> None:
    _create(args, Kind.ACTIVE)


def cmd_view(args: argparse.Namespace) -> None:
    _create(args, Kind.VIEW)


def cmd_commit(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        sn.commit(args.name, args.key, labels=_labels(args.label))
        info = sn.stat(args.name)
    if args.json:
        _print_json(snapshot_json(info))


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove each key; a failure is reported and the rest still go (unlike ctr)."""
    code = EXIT_OK
    removed: list[str] = []
    with _snapshotter(args) as sn:
        for key in args.keys:
            try:
                sn.remove(key)
                removed.append(key)
            except (SnapshotError, OSError) as e:
                kind = kind_of(e)
                failed = _fail(args, kind.code, f"{args.command}: {e}", kind.exit_code)
                code = code or failed  # every failure reported; the first one's code
    return code


def cmd_ls(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        infos = sn.walk(*args.filters)
    infos.sort(key=lambda i: i.name)
    if args.json:
        _print_json([snapshot_json(i) for i in infos])
        return
    rows = [["KEY", "PARENT", "KIND"]] + [[i.name, i.parent, str(i.kind)] for i in infos]
    table(rows, sys.stdout)


def cmd_info(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        info = sn.stat(args.key)
    if args.json:
        _print_json(snapshot_json(info))
        return
    doc = snapshot_json(info)
    rows = [[f"{k.capitalize()}:", str(doc[k])] for k in ("name", "kind", "parent", "created")]
    rows.append(["Updated:", doc["updated"]])
    labels = sorted(info.labels.items())
    rows.append(["Labels:", f"{labels[0][0]}={labels[0][1]}" if labels else ""])
    rows += [["", f"{k}={v}"] for k, v in labels[1:]]
    table(rows, sys.stdout)


def cmd_usage(args: argparse.Namespace) -> None:
    results: list[tuple[str, Usage]] = []
    with _snapshotter(args) as sn:
        keys = args.keys or sorted(i.name for i in sn.walk())
        for key in keys:
            progress = _progress_for(f"usage {key}")
            results.append((key, sn.usage(key, progress=progress)))
            _clear_progress()
    if args.json:
        _print_json([{"key": k, "size": u.size, "inodes": u.inodes} for k, u in results])
    else:
        table(_usage_rows("KEY", results, args.bytes), sys.stdout)


def cmd_du(args: argparse.Namespace) -> None:
    from snapcore.du import disk_usage

    results: list[tuple[str, Usage]] = []
    for path in args.paths:
        progress = _progress_for(f"du {path}")
        if progress is None:
            size, inodes = disk_usage(path)
        else:
            size, inodes = disk_usage(path, progress=progress, progress_every=DU_PROGRESS_EVERY)
        _clear_progress()
        results.append((path, Usage(size, inodes)))
    if args.json:
        _print_json([{"path": p, "size": u.size, "inodes": u.inodes} for p, u in results])
    else:
        table(_usage_rows("PATH", results, args.bytes), sys.stdout)


def cmd_mounts(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        mounts = sn.mounts(args.key)
    if args.json:
        _print_json([mount_json(m, args.target) for m in mounts])
        return
    for m in mounts:
        print(mount_command(m, args.target))


def cmd_mount(args: argparse.Namespace) -> None:
    from .mounts import mount_all

    with _snapshotter(args) as sn:
        mounts = sn.mounts(args.key)
    mount_all(mounts, args.target)


def cmd_unmount(args: argparse.Namespace) -> None:
    from .mounts import unmount

    unmount(args.target, detach=args.lazy)


def cmd_label(args: argparse.Namespace) -> None:
    """Set or delete labels as ctr does: only the named labels change."""
    pairs: list[tuple[str, str]] = args.labels
    with _snapshotter(args) as sn:
        if pairs:
            info = Info(kind=Kind.ACTIVE, name=args.key, labels=_labels(pairs))
            info = sn.update(info, *(f"labels.{k}" for k, _ in pairs))
        else:
            info = sn.stat(args.key)
    if args.json:
        _print_json(snapshot_json(info))
    else:
        for k, v in sorted(info.labels.items()):
            print(f"{k}={v}")


def cmd_tree(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        infos = sn.walk()
    by_name = {i.name: i for i in infos}
    children: dict[str, list[Info]] = {}
    roots: list[Info] = []
    for info in sorted(infos, key=lambda i: i.name):
        if info.parent and info.parent in by_name:
            children.setdefault(info.parent, []).append(info)
        else:
            roots.append(info)

    # Iterative, so a chain of any depth prints (chains of 500 layers are normal).
    if args.json:

        def node(info: Info) -> dict[str, Any]:
            doc = snapshot_json(info)
            doc["children"] = []
            return doc

        forest = [node(r) for r in roots]
        stack = list(zip(roots, forest, strict=True))
        while stack:
            info, doc = stack.pop()
            for child in children.get(info.name, ()):
                cdoc = node(child)
                doc["children"].append(cdoc)
                stack.append((child, cdoc))
        _print_json(forest)
        return
    out = sys.stdout
    todo: list[tuple[Info, int]] = [(r, 0) for r in reversed(roots)]
    while todo:
        info, depth = todo.pop()
        prefix = "  " * depth + "\\_ " if depth else ""
        out.write(f"{prefix}{info.name} ({info.kind})\n")
        todo += [(c, depth + 1) for c in reversed(children.get(info.name, ()))]


def cmd_cleanup(args: argparse.Namespace) -> None:
    with _snapshotter(args) as sn:
        sn.cleanup()


# ---------------------------------------------------------------------- demo

# Three layers: what each one does to the tree it starts from.
DEMO_LAYERS: list[tuple[str, str, dict[str, bytes | None]]] = [
    (
        "layer-1",
        "adds files",
        {
            "etc/greeting": b"hello from layer 1\n",
            "etc/config": b"colour = blue\n",
            "data/blob.bin": bytes(range(256)) * 256,
        },
    ),
    (
        "layer-2",
        "changes a file, adds one",
        {"etc/greeting": b"hello again, from layer 2\n", "bin/run.sh": b"#!/bin/sh\necho hi\n"},
    ),
    ("layer-3", "deletes files", {"data/blob.bin": None, "etc/config": None}),
]


def _apply(tree: str, changes: Mapping[str, bytes | None]) -> None:
    for rel, content in changes.items():
        path = os.path.join(tree, rel)
        if content is None:
            os.unlink(path)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


def _contents(tree: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(dirpath, name)
            found.append((os.path.relpath(path, tree), os.lstat(path).st_size))
    return sorted(found)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job end to end on a temporary root of its own, never --root."""
    from .mounts import mounted
    from .overlay import OverlaySnapshotter

    say: Callable[[str], None] = (lambda _: None) if args.json else print
    root = tempfile.mkdtemp(prefix="pysnap-demo-")
    layers: list[dict[str, Any]] = []
    files: list[tuple[str, int]] = []
    greeting = b""
    try:
        say(f"pysnap demo: a fresh snapshotter root in {root}")
        with OverlaySnapshotter(root) as sn:
            parent = ""
            for name, what, changes in DEMO_LAYERS:
                key = f"{name}-build"
                with mounted(sn.prepare(key, parent=parent)) as target:
                    _apply(target, changes)
                sn.commit(name, key)
                usage = sn.usage(name)
                layers.append(
                    {
                        "name": name,
                        "parent": parent,
                        "what": what,
                        "size": usage.size,
                        "inodes": usage.inodes,
                    }
                )
                say(
                    f"  {name}: {what} ({', '.join(sorted(changes))}); committed, "
                    f"{human_size(usage.size)} in {usage.inodes} inodes"
                )
                parent = name
            with mounted(sn.view("top-view", parent=parent)) as target:
                files = _contents(target)
                with open(os.path.join(target, "etc/greeting"), "rb") as f:
                    greeting = f.read()
            say(f"  a read-only view of {parent}, mounted with overlayfs, holds:")
            for rel, size in files:
                say(f"    {rel} ({size} bytes)")
            say(f"  etc/greeting reads: {greeting.decode().strip()!r}")
            sn.remove("top-view")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    say(f"  unmounted, and removed {root}: nothing left behind.")
    if args.json:
        _print_json(
            {
                "layers": layers,
                "view": [{"path": p, "size": s} for p, s in files],
                "greeting": greeting.decode(),
                "root": root,
                "removed": not os.path.exists(root),
            }
        )


# ---------------------------------------------------------------------- main


def _fail(args: argparse.Namespace | None, code: str, message: str, exit_code: int) -> int:
    """Report one error on stderr (JSON under --json) and give its exit code."""
    _clear_progress()
    if args is not None and getattr(args, "json", False):
        doc = {"error": {"code": code, "message": message, "exit_code": exit_code}}
        sys.stderr.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"pysnap: {message}\n")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pysnap`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    command = args.command
    try:
        return args.func(args) or EXIT_OK
    except BrokenPipeError:
        # The reader went away (`pysnap ls | head`): stop quietly, as cat does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except (SnapshotError, OSError) as e:  # the one table of error kinds
        kind = kind_of(e)
        msg = f"{command}: {e}"
        if kind.code == "EPERM" and command in ("mount", "unmount", "umount", "demo"):
            msg += " (mounting needs root: CAP_SYS_ADMIN)"
        return _fail(args, kind.code, msg, kind.exit_code)
    except KeyboardInterrupt:
        _clear_progress()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("pysnap: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc()
        return _fail(args, "unexpected", f"{command}: {type(e).__name__}: {e}", EXIT_UNEXPECTED)


def run() -> None:
    """The console script: ``sys.exit(main())``."""
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C before main's handler was in place
        code = EXIT_INTERRUPTED
    sys.exit(code)


__all__ = ["build_parser", "human_size", "main", "run"]

if __name__ == "__main__":
    run()
