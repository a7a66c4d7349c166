"""``pysnap apply`` and ``pysnap diff``: OCI layers into and out of snapshots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import IO

from ..archive import Layer
from ..errors import UnimplementedError
from ._common import AddCommand, snapshotter
from ._output import print_json, table


def register(add: AddCommand) -> None:
    p = add("apply", cmd_apply, "apply an OCI layer (tar, +gzip, +zstd) into an active snapshot")
    p.add_argument("key")
    p.add_argument("layer", metavar="LAYER", help="the layer blob; - for stdin")
    p.add_argument("--diff-id", help="the expected diff ID (sha256:...), checked at the end")
    p.add_argument("--sync", action="store_true", default=None, help="syncfs once at the end")
    p.add_argument("--force", action="store_true", help="apply although the upper is mounted")
    p = add("diff", cmd_diff, "write the layer of an active or committed snapshot")
    p.add_argument("key")
    p.add_argument("out", metavar="OUT", help="the layer file to write; - for stdout")
    p.add_argument(
        "--compression", choices=("gzip", "zstd", "none"), default="gzip", help="default gzip"
    )
    p.add_argument("--level", type=int, help="compression level (gzip 0-3, zstd 1-22)")


def _report(args: argparse.Namespace, layer: Layer, out: IO[str]) -> None:
    fields = dataclasses.asdict(layer)
    if args.json and out is sys.stdout:
        print_json(fields)
    elif args.json:
        json.dump(fields, out, indent=2)
        out.write("\n")
    else:
        table([[k.upper().replace("_", " "), str(v)] for k, v in fields.items()], out)


def _refuse_remote(args: argparse.Namespace) -> None:
    if getattr(args, "address", None):
        raise UnimplementedError(
            "apply and diff work on a local root only (they read and write the upper "
            "directory itself; the snapshot API has no call for them)"
        )


def cmd_apply(args: argparse.Namespace) -> None:
    _refuse_remote(args)
    with snapshotter(args) as sn:
        source = sys.stdin.buffer if args.layer == "-" else args.layer
        layer = sn.apply(args.key, source, diff_id=args.diff_id, sync=args.sync, force=args.force)
    _report(args, layer, sys.stdout)


def cmd_diff(args: argparse.Namespace) -> None:
    _refuse_remote(args)
    compression = None if args.compression == "none" else args.compression
    with snapshotter(args) as sn:
        target = sys.stdout.buffer if args.out == "-" else args.out
        layer = sn.diff(args.key, target, compression=compression, level=args.level)
    # with the layer on stdout, the report goes to stderr
    _report(args, layer, sys.stderr if args.out == "-" else sys.stdout)
