"""Subcommands that mount snapshots: mounts (print the commands), mount, unmount."""

from __future__ import annotations

import argparse

from ._common import AddCommand, snapshotter
from ._output import mount_command, mount_json, print_json


def register(add: AddCommand) -> None:
    p = add("mounts", cmd_mounts, "print the mount commands for snapshot KEY at TARGET")
    p.add_argument("target")
    p.add_argument("key")

    p = add("mount", cmd_mount, "mount snapshot KEY at TARGET")
    p.add_argument("key")
    p.add_argument("target")

    p = add("unmount", cmd_unmount, "unmount TARGET", ("umount",))
    p.add_argument("target")
    p.add_argument("-l", "--lazy", action="store_true", help="detach (MNT_DETACH)")


def cmd_mounts(args: argparse.Namespace) -> None:
    with snapshotter(args) as sn:
        mounts = sn.mounts(args.key)
    if args.json:
        print_json([mount_json(m, args.target) for m in mounts])
        return
    for m in mounts:
        print(mount_command(m, args.target))


def cmd_mount(args: argparse.Namespace) -> None:
    from ..mounts import mount_all

    with snapshotter(args) as sn:
        mounts = sn.mounts(args.key)
    mount_all(mounts, args.target)


def cmd_unmount(args: argparse.Namespace) -> None:
    from ..mounts import unmount

    unmount(args.target, detach=args.lazy)
