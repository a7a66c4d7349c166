"""`pysnap serve`: containerd's Snapshots gRPC service over an OverlaySnapshotter.

Needs the ``server`` extra (grpcio, protobuf, grpcio-health-checking), which
``SnapshotServer`` and ``serve`` import on first use, so that
``pysnap serve --print-config`` (``containerd_config``) works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import SnapshotServer, serve


def __getattr__(name: str) -> Any:
    if name in ("SnapshotServer", "serve"):
        from . import daemon

        return getattr(daemon, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SnapshotServer", "serve"]
