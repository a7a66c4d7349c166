"""Subcommands on the snapshots of a root: prepare, view, commit, rm, ls, info,
usage, label, tree and cleanup (``ctr snapshots``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SnapshotError, UnimplementedError
from ..types import Info, Kind, Usage
from ._common import (
    AddCommand,
    label_arg,
    label_option,
    labels,
    new_snapshot_labels,
    refuse_if_mounted,
    snapshotter,
)
from ._output import (
    EXIT_OK,
    clear_progress,
    mount_command,
    mount_json,
    print_json,
    progress_for,
    report,
    snapshot_json,
    table,
    usage_rows,
)


def register(add: AddCommand) -> None:
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
    force_option(p, "commit")

    p = add("rm", cmd_rm, "remove snapshots", aliases=("remove", "delete", "del"))
    p.add_argument("keys", nargs="+", metavar="KEY")
    force_option(p, "remove")

    p = add("ls", cmd_ls, "list snapshots matching any FILTER (containerd syntax)", ("list",))
    p.add_argument("filters", nargs="*", metavar="FILTER")

    p = add("info", cmd_info, "show one snapshot")
    p.add_argument("key")

    p = add("usage", cmd_usage, "disk usage of snapshots (all when no KEY)")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")

    p = add("label", cmd_label, "set labels (KEY=VALUE) or delete them (KEY=) on a snapshot")
    p.add_argument("key")
    p.add_argument("labels", nargs="*", type=label_arg, metavar="KEY=VALUE")

    add("tree", cmd_tree, "show snapshots as a forest of parents and children")
    p = add("cleanup", cmd_cleanup, "remove directories that no snapshot owns")
    p.add_argument("-n", "--dry-run", action="store_true", help="only say what would go")


def force_option(p: argparse.ArgumentParser, action: str) -> None:
    p.add_argument(
        "-f", "--force", action="store_true", help=f"{action} even a snapshot that is mounted"
    )


def _create(args: argparse.Namespace, kind: Kind) -> None:
    new_labels = new_snapshot_labels(args)
    with snapshotter(args, create=True) as sn:
        if kind == Kind.VIEW:
            mounts = sn.view(args.key, parent=args.parent, labels=new_labels)
        else:
            mounts = sn.prepare(args.key, parent=args.parent, labels=new_labels)
        info = sn.stat(args.key)
    if args.json:
        doc = snapshot_json(info)
        doc["mounts"] = [mount_json(m, args.target) for m in mounts]
        print_json(doc)
    elif args.target:
        for m in mounts:
            print(mount_command(m, args.target))


def cmd_prepare(args: argparse.Namespace) -> None:
    _create(args, Kind.ACTIVE)


def cmd_view(args: argparse.Namespace) -> None:
    _create(args, Kind.VIEW)


def cmd_commit(args: argparse.Namespace) -> None:
    """Commit; a mounted snapshot is refused (writes through its mount would change
    a committed layer), unless --force."""
    with snapshotter(args, upperdir_label=not args.force) as sn:
        if not args.force:
            refuse_if_mounted(sn, args.key, "commit")
        sn.commit(args.name, args.key, labels=new_snapshot_labels(args))
        info = sn.stat(args.name)
    if args.json:
        print_json(snapshot_json(_without_upperdir(info)))


def _without_upperdir(info: Info) -> Info:
    from ..overlay import UPPERDIR_LABEL  # added by the check's snapshotter, not stored

    return info.replace(labels={k: v for k, v in info.labels.items() if k != UPPERDIR_LABEL})


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove each key and say so; a failure is reported and the rest still go (unlike
    ctr). A mounted snapshot is refused (its files would vanish under the mount),
    unless --force."""
    code = EXIT_OK
    removed: list[str] = []
    with snapshotter(args, upperdir_label=not args.force) as sn:
        for key in args.keys:
            try:
                if not args.force:
                    refuse_if_mounted(sn, key, "remove")
                sn.remove(key)
            except (SnapshotError, OSError) as e:
                failed = report(args, args.command, e)
                code = code or failed  # every failure reported; the first one's code
            else:
                removed.append(key)
                if not args.json:
                    print(f"removed {key}")
    if args.json:
        print_json({"removed": removed})
    return code


def cmd_ls(args: argparse.Namespace) -> None:
    with snapshotter(args) as sn:
        infos = sn.walk(*args.filters)
    infos.sort(key=lambda i: i.name)
    if args.json:
        print_json([snapshot_json(i) for i in infos])
        return
    rows = [["KEY", "PARENT", "KIND"]] + [[i.name, i.parent, str(i.kind)] for i in infos]
    table(rows, sys.stdout)


def cmd_info(args: argparse.Namespace) -> None:
    with snapshotter(args) as sn:
        info = sn.stat(args.key)
    if args.json:
        print_json(snapshot_json(info))
        return
    doc = snapshot_json(info)
    rows = [[f"{k.capitalize()}:", str(doc[k])] for k in ("name", "kind", "parent", "created")]
    rows.append(["Updated:", doc["updated"]])
    sorted_labels = sorted(info.labels.items())
    rows.append(["Labels:", "=".join(sorted_labels[0]) if sorted_labels else ""])
    rows += [["", f"{k}={v}"] for k, v in sorted_labels[1:]]
    table(rows, sys.stdout)


def cmd_usage(args: argparse.Namespace) -> None:
    results: list[tuple[str, Usage]] = []
    with snapshotter(args) as sn:
        keys = args.keys or sorted(i.name for i in sn.walk())
        for key in keys:
            progress = progress_for(f"usage {key}")
            results.append((key, sn.usage(key, progress=progress)))
            clear_progress()
    if args.json:
        print_json([{"key": k, "size": u.size, "inodes": u.inodes} for k, u in results])
    else:
        table(usage_rows("KEY", results, args.bytes), sys.stdout)


def cmd_label(args: argparse.Namespace) -> None:
    """Set or delete labels as ctr does: only the named labels change."""
    pairs: list[tuple[str, str]] = args.labels
    with snapshotter(args) as sn:
        if pairs:
            info = Info(kind=Kind.ACTIVE, name=args.key, labels=labels(pairs))
            info = sn.update(info, *(f"labels.{k}" for k, _ in pairs))
        else:
            info = sn.stat(args.key)
    if args.json:
        print_json(snapshot_json(info))
    else:
        for k, v in sorted(info.labels.items()):
            print(f"{k}={v}")


def cmd_tree(args: argparse.Namespace) -> None:
    with snapshotter(args) as sn:
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
        print_json(forest)
        return
    out = sys.stdout
    todo: list[tuple[Info, int]] = [(r, 0) for r in reversed(roots)]
    while todo:
        info, depth = todo.pop()
        prefix = "  " * depth + "\\_ " if depth else ""
        out.write(f"{prefix}{info.name} ({info.kind})\n")
        todo += [(c, depth + 1) for c in reversed(children.get(info.name, ()))]


def cmd_cleanup(args: argparse.Namespace) -> None:
    with snapshotter(args) as sn:
        if getattr(args, "address", None):
            # containerd's Cleanup RPC has no dry run and answers nothing of what it removed
            if args.dry_run:
                raise UnimplementedError("cleanup --dry-run: a remote snapshotter cannot tell")
            sn.cleanup()
            if args.json:
                print_json({"dry_run": False, "removed": None})  # None: not told
            return
        paths = sn.cleanup(dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": args.dry_run, "removed": paths})
        return
    verb = "would remove" if args.dry_run else "removed"
    for path in paths:
        print(f"{verb} {path}")
