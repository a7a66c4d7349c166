"""Subcommands that mount snapshots: mounts (print the commands), mount, unmount.

Both ``mounts`` and ``mount`` take TARGET before KEY, as ``ctr snapshots``.
"""

from __future__ import annotations

import argparse
import shlex

from ..errors import NotFoundError
from ..types import Mount
from ._common import AddCommand, snapshotter
from ._output import UsageError, mount_command, mount_json, print_json


def register(add: AddCommand) -> None:
    p = add("mounts", cmd_mounts, "print the mount commands for snapshot KEY at TARGET")
    p.add_argument("target")
    p.add_argument("key")

    p = add("mount", cmd_mount, "mount snapshot KEY at TARGET")
    p.add_argument("target")
    p.add_argument("key")

    p = add("unmount", cmd_unmount, "unmount TARGET", ("umount",))
    p.add_argument("target")
    p.add_argument("-l", "--lazy", action="store_true", help="detach (MNT_DETACH)")


def _mounts_of(args: argparse.Namespace) -> list[Mount]:
    """The mounts of args.key; a usage error when args.target is the key meant.

    KEY TARGET was this command's order before it followed ctr's TARGET KEY.
    """
    with snapshotter(args) as sn:
        try:
            return sn.mounts(args.key)
        except NotFoundError:
            try:
                sn.stat(args.target)
            except NotFoundError:
                pass
            else:
                raise UsageError(
                    f"{args.command}: {args.key!r} is no snapshot, {args.target!r} is: "
                    f"did you mean `pysnap {args.command} {shlex.join([args.key, args.target])}`"
                    " (TARGET first, then KEY)?"
                ) from None
            raise


def cmd_mounts(args: argparse.Namespace) -> None:
    mounts = _mounts_of(args)
    if args.json:
        print_json([mount_json(m, args.target) for m in mounts])
        return
    for m in mounts:
        print(mount_command(m, args.target))


def cmd_mount(args: argparse.Namespace) -> None:
    from ..mounts import mount_all

    mount_all(_mounts_of(args), args.target)


def cmd_unmount(args: argparse.Namespace) -> None:
    from ..mounts import unmount

    unmount(args.target, detach=args.lazy)
