"""``pysnap serve``: the root as containerd's Snapshots gRPC service (a proxy snapshotter)."""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import UnimplementedError
from ._common import AddCommand
from ._output import UsageError, print_json

DEFAULT_ADDRESS = "/run/pysnap/pysnap.sock"
_LOG_LEVELS = ("debug", "info", "warning", "error")


def register(add: AddCommand) -> None:
    p = add(
        "serve",
        cmd_serve,
        "serve the root to containerd over gRPC (proxy_plugins), until SIGTERM or SIGINT",
    )
    # --root after `serve` too (as `pysnap serve --root R`); SUPPRESS keeps the global one.
    p.add_argument("--root", default=argparse.SUPPRESS, help="the root to serve")
    p.add_argument(
        "--address",
        dest="serve_address",
        default=DEFAULT_ADDRESS,
        metavar="PATH",
        help=f"the unix socket to serve on (default {DEFAULT_ADDRESS})",
    )
    p.add_argument(
        "--async-remove", action="store_true", help="leave removed directories to cleanup"
    )
    p.add_argument(
        "--no-sync", action="store_true", help="skip flushes (a power loss may lose recent calls)"
    )
    p.add_argument(
        "--mount-option",
        action="append",
        default=[],
        metavar="O",
        help="an overlay mount option added to every mount (repeatable)",
    )
    p.add_argument(
        "--upperdir-label",
        action="store_true",
        help="add containerd.io/snapshot/overlay.upperdir to every Info",
    )
    p.add_argument(
        "--adopt-layers",
        action="store_true",
        help="answer a prepare labelled containerd.io/snapshot.ref=CHAIN with ALREADY_EXISTS "
        "when a committed snapshot with that label is on its parent, so containerd adopts "
        "layers this root already holds (its remote-snapshot protocol)",
    )
    p.add_argument("--workers", type=int, default=16, help="threads serving calls (default 16)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, how long calls in flight may take to finish (default 10)",
    )
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the block of containerd's config.toml for this server, and exit",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "address", None):
        raise UsageError("--address before `serve` is the remote mode; serve a local --root")
    root = os.path.abspath(args.root)
    address = os.path.abspath(args.serve_address)
    if args.print_config:
        from ..server.containerd_config import proxy_plugin_block, proxy_plugin_table

        if args.json:
            print_json(proxy_plugin_table(root, address))
        else:
            print(proxy_plugin_block(root, address), end="")
        return 0
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from ..server import serve  # imported late: grpc is the server extra's
    except ImportError as e:
        raise UnimplementedError(
            f"serve needs the server extra (pip install 'pysnap[server]'): {e}"
        ) from None

    return serve(
        root,
        address,
        sync=not args.no_sync,
        async_remove=args.async_remove,
        mount_options=args.mount_option,
        upperdir_label=args.upperdir_label,
        workers=args.workers,
        grace=args.grace,
        map_size=getattr(args, "map_size", None),  # the global --map-size
        adopt_layers=args.adopt_layers,
    )
