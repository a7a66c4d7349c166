"""`pysnap serve`: containerd's Snapshots gRPC service over an OverlaySnapshotter.

Needs the ``server`` extra (grpcio, protobuf, grpcio-health-checking).
"""

from .daemon import SnapshotServer, serve

__all__ = ["SnapshotServer", "serve"]
