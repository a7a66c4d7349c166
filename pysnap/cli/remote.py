"""The remote mode: ``pysnap --address ADDR [--snapshotter NAME] [--namespace NS] COMMAND``.

Every snapshot subcommand then runs on a ``pysnap.client.RemoteSnapshotter``:
``pysnap serve``, another proxy snapshotter, or containerd's own socket (with
``--snapshotter``, and a namespace: ``--namespace``, else
``$CONTAINERD_NAMESPACE``, else ``default``). ``mount`` mounts the mounts the
server answers, here, as containerd's applier does; ``serve`` and ``du`` work
on local paths only.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import UnimplementedError

if TYPE_CHECKING:
    from ..client import RemoteSnapshotter


def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("remote mode")
    g.add_argument(
        "--address",
        help="run the subcommand on the snapshotter served at ADDRESS (a unix socket) "
        "instead of --root",
    )
    g.add_argument(
        "--snapshotter",
        help="the snapshotter's name on ADDRESS, when ADDRESS is containerd's socket",
    )
    g.add_argument(
        "--namespace",
        help="the containerd namespace (default with --snapshotter: "
        "$CONTAINERD_NAMESPACE, else 'default'; without: none sent)",
    )


def open_remote(args: argparse.Namespace) -> RemoteSnapshotter:
    """The RemoteSnapshotter the remote options name."""
    try:
        from ..client import RemoteSnapshotter  # imported late: grpc is the server extra's
    except ImportError as e:
        raise UnimplementedError(
            f"--address needs the server extra (pip install 'pysnap[server]'): {e}"
        ) from None

    namespace = args.namespace
    if namespace is None and args.snapshotter:
        namespace = os.environ.get("CONTAINERD_NAMESPACE") or "default"
    return RemoteSnapshotter(args.address, snapshotter=args.snapshotter, namespace=namespace)
