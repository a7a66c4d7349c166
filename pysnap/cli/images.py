"""``pysnap image unpack|export``: OCI images into chains of snapshots, and back."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidArgumentError, UnimplementedError
from ._common import AddCommand, snapshotter
from ._output import print_json, table


def register(add: AddCommand) -> None:
    p = add("image", _missing, "unpack OCI images into snapshots; export snapshots as images")
    sub = p.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    # --json after the sub-subcommand too; SUPPRESS keeps the value given earlier.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")

    def add_sub(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    u = add_sub(
        "unpack",
        "unpack an OCI image layout (directory or tar) or a docker save archive; "
        "each layer becomes a committed snapshot named by its chain ID",
    )
    u.add_argument("source", metavar="SOURCE")
    u.add_argument("--ref", help="the image to take, when SOURCE holds several")
    u.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    u.add_argument(
        "--sequential",
        action="store_true",
        help="apply the layers one after the other (default: at once while half a core is idle)",
    )
    u.set_defaults(func=cmd_unpack)

    e = add_sub(
        "export",
        "write NAME's chain of snapshots as an OCI image layout (a directory, or a tar "
        "when DEST ends in .tar, or a tar on stdout when DEST is -)",
    )
    e.add_argument("name", metavar="NAME")
    e.add_argument("dest", metavar="DEST")
    e.add_argument("--ref", help="the image's name in index.json (e.g. example.com/app:1)")
    e.add_argument(
        "--config",
        metavar="FILE",
        help="JSON of the config section (Cmd, Entrypoint, Env, WorkingDir, ...)",
    )
    e.add_argument(
        "--compression",
        choices=("gzip", "zstd", "none"),
        default="gzip",
        help="of the layers that are diffed (default gzip)",
    )
    e.set_defaults(func=cmd_export)


def _missing(args: argparse.Namespace) -> None:
    # Unreached while argparse requires the subcommand; add() needs a handler.
    raise InvalidArgumentError("image: a subcommand is required (unpack or export)")


def _local_only(args: argparse.Namespace) -> None:
    # unpack and export keep blobs under the root and apply or diff in its
    # directories: a snapshotter reached over gRPC (--address) offers neither.
    if getattr(args, "address", None):
        raise UnimplementedError(f"image {args.image_command}: needs a local --root, not --address")


def cmd_unpack(args: argparse.Namespace) -> None:
    from ..images import unpack

    _local_only(args)
    with snapshotter(args, create=True) as sn:  # an unpack makes snapshots, like prepare
        image = unpack(
            sn, args.source, ref=args.ref, platform=args.platform, parallel=not args.sequential
        )
    layers = [
        {
            "chain_id": chain,
            "diff_id": layer.diff_id,
            "digest": layer.digest,
            "size": layer.size,
            "media_type": layer.media_type,
            "entries": layer.entries,
        }
        for chain, layer in zip(image.chain_ids, image.layers, strict=True)
    ]
    if args.json:
        print_json(
            {
                "manifest_digest": image.manifest_digest,
                "config_digest": image.config_digest,
                "top": image.top,
                "layers": layers,
            }
        )
        return
    rows = [["CHAIN ID", "DIFF ID", "SIZE", "ENTRIES"]]
    rows += [
        [chain, layer.diff_id, str(layer.size), str(layer.entries)]
        for chain, layer in zip(image.chain_ids, image.layers, strict=True)
    ]
    table(rows, sys.stdout)
    print(f"top: {image.top}")


def cmd_export(args: argparse.Namespace) -> None:
    from ..images import export

    config: Any = None
    if args.config is not None:
        try:
            with open(args.config, encoding="utf-8") as f:
                config = json.load(f)
        except ValueError as e:
            raise InvalidArgumentError(f"--config {args.config}: not JSON: {e}") from None
    compression = None if args.compression == "none" else args.compression
    _local_only(args)
    to_stdout = args.dest == "-"
    dest = sys.stdout.buffer if to_stdout else args.dest
    with snapshotter(args) as sn:
        desc = export(sn, args.name, dest, ref=args.ref, config=config, compression=compression)
    if to_stdout:  # the tar holds stdout: the report goes to stderr
        sys.stdout.flush()
        print(f"-: manifest {desc.digest}", file=sys.stderr)
    elif args.json:
        print_json({"dest": args.dest, "manifest": desc.to_json()})
    else:
        print(f"{args.dest}: manifest {desc.digest}")
