"""``pysnap demo``: build, mount and measure three layers on a temporary root."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping
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


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (then they act as usual).

    A Ctrl-C inside mkdtemp would leak the new directory before its name is
    known; one during the clean-up would stop it half way.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _remove_root(root: str) -> None:
    """Unmount whatever is still mounted under ``root`` (deepest first), then remove it."""
    from ..fsutil import remove_tree
    from ..mountinfo import mounts_under
    from ..mounts import unmount

    for entry in sorted(mounts_under(root), key=lambda e: len(e.mount_point), reverse=True):
        unmount(entry.mount_point, detach=True)
    if mounts_under(root):  # never remove files through a mount
        raise OSError(errno.EBUSY, "still mounted after detaching its mounts", root)
    remove_tree(root)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job end to end on a temporary root of its own, never --root.

    Its mounts go inside that root, so one clean-up at the end (also after a
    Ctrl-C or an error) unmounts and removes everything the demo made.
    """
    from ..mounts import mounted
    from ..overlay import OverlaySnapshotter

    say: Callable[[str], None] = (lambda _: None) if args.json else print
    layers: list[dict[str, Any]] = []
    files: list[tuple[str, int]] = []
    greeting = b""
    root = ""
    try:
        with _no_interrupts():
            root = tempfile.mkdtemp(prefix="pysnap-demo-")
        targets = os.path.join(root, "mnt")
        os.mkdir(targets)
        say(f"pysnap demo: a fresh snapshotter root in {root}")
        with OverlaySnapshotter(root) as sn:
            parent = ""
            for name, what, changes in DEMO_LAYERS:
                key = f"{name}-build"
                with mounted(sn.prepare(key, parent=parent), dir=targets) as target:
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
            with mounted(sn.view("top-view", parent=parent), dir=targets) as target:
                files = _contents(target)
                with open(os.path.join(target, "etc/greeting"), "rb") as f:
                    greeting = f.read()
            say(f"  a read-only view of {parent}, mounted with overlayfs, holds:")
            for rel, size in files:
                say(f"    {rel} ({size} bytes)")
            say(f"  etc/greeting reads: {greeting.decode().strip()!r}")
            sn.remove("top-view")
    finally:
        if root:
            with _no_interrupts():
                _remove_root(root)
    say(f"  unmounted, and removed {root}: nothing left behind.")
    say("  by hand: pysnap prepare KEY PARENT, pysnap mount TARGET KEY, pysnap unmount TARGET,")
    say("  pysnap commit NAME KEY (pysnap --help lists the rest)")
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
