"""``pysnap demo``: build, mount and measure three layers on a temporary root."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from ._common import AddCommand
from ._output import human_size, print_json

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


def register(add: AddCommand) -> None:
    add("demo", cmd_demo, "build, mount and measure three layers on a temporary root")


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
    from ..mounts import mounted
    from ..overlay import OverlaySnapshotter

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
        print_json(
            {
                "layers": layers,
                "view": [{"path": p, "size": s} for p, s in files],
                "greeting": greeting.decode(),
                "root": root,
                "removed": not os.path.exists(root),
            }
        )
