"""RemoteSnapshotter: OverlaySnapshotter's API over containerd's Snapshots gRPC API.

It drives ``pysnap serve``, any other proxy snapshotter (stargz, soci, ...),
or containerd itself, whose main socket serves the same API for each of its
snapshotters (``snapshotter="overlayfs"``) in a namespace (``namespace="default"``).
The methods, types and error classes are OverlaySnapshotter's; errors come
back from their status codes through the table in ``pysnap.errors``. Needs
the ``server`` extra (grpcio, protobuf).

Differences from the in-process snapshotter, all because the work happens in
the server: ``usage(progress=...)`` never calls ``progress``; ``sync()`` is
``UnimplementedError`` (the server's own ``--no-sync`` decides); there is no
``root``. Layer and image work that only needs a snapshot's mounts goes
through ``mounts()``, as containerd's applier does.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc

from .errors import InvalidArgumentError, UnimplementedError
from .server import convert
from .server._proto import snapshots_pb2 as pb
from .server._proto import snapshots_pb2_grpc
from .types import Info, Mount, Usage

T = TypeVar("T")

Labels = Mapping[str, str] | None
Progress = Callable[[int, int], object] | None


#: grpc targets: any ``scheme://...`` URI (``dns:///``, ``passthrough:///``...), or
#: the schemes grpc also takes without ``//`` (``unix:path``, ``ipv4:addr``...).
_GRPC_TARGET = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|(unix|unix-abstract|dns|ipv4|ipv6|vsock):")


def target_of(address: str | os.PathLike[str]) -> str:
    """The grpc target of an address: a socket path, or any grpc target (``unix:PATH``...).

    As ``ctr --address``: a path with a ``/`` in it, or a socket that exists,
    is a unix socket, relative ones from the working directory. Anything
    else (``host:port``) goes to grpc as it is.
    """
    address = os.fspath(address)
    if _GRPC_TARGET.match(address):
        return address
    if "/" in address or _is_socket(address):
        return convert.unix_target(os.path.abspath(address))
    return address


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


class RemoteSnapshotter:
    """A snapshotter reached over gRPC at ``address`` (a unix socket path or grpc target).

    ``snapshotter`` fills the request field that containerd's main socket
    needs; a proxy snapshotter ignores it. ``namespace`` is sent as the
    ``containerd-namespace`` header; ``None`` sends none. Thread-safe; close
    it, or use it as a context manager.
    """

    def __init__(
        self,
        address: str | os.PathLike[str],
        *,
        snapshotter: str | None = None,
        namespace: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = os.fspath(address)
        self.snapshotter = snapshotter or ""
        self.namespace = namespace
        self._metadata = None if namespace is None else ((convert.NAMESPACE_HEADER, namespace),)
        self._timeout = timeout
        self._channel = grpc.insecure_channel(target_of(address), options=_CHANNEL_OPTIONS)
        self._stub = snapshots_pb2_grpc.SnapshotsStub(self._channel)  # type: ignore[no-untyped-call]

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close the channel. Calling it again does nothing."""
        self._channel.close()

    def sync(self) -> None:
        """Not over the wire: the server flushes as its ``--no-sync`` says."""
        raise UnimplementedError("sync: a remote snapshotter flushes as its server is configured")

    def __enter__(self) -> RemoteSnapshotter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------

    def stat(self, key: str) -> Info:
        """Info of the snapshot ``key``. Raises NotFoundError."""
        r = self._call(self._stub.Stat, self._req(pb.StatSnapshotRequest, key=key))
        return convert.info_from_pb(r.info)

    def usage(self, key: str, progress: Progress = None) -> Usage:
        """Disk usage of ``key``, walked in the server (``progress`` is never called)."""
        r = self._call(self._stub.Usage, self._req(pb.UsageRequest, key=key))
        return convert.usage_from_pb(r)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an ACTIVE or VIEW snapshot."""
        r = self._call(self._stub.Mounts, self._req(pb.MountsRequest, key=key))
        return convert.mounts_from_pb(r.mounts)

    def walk(self, *filters: str) -> list[Info]:
        """Infos of all snapshots matching any of ``filters`` (the List stream, read whole)."""
        req = self._req(pb.ListSnapshotsRequest, filters=filters)

        def read() -> list[Info]:
            stream = self._stub.List(req, timeout=self._timeout, metadata=self._metadata)
            return [convert.info_from_pb(i) for batch in stream for i in batch.info]

        return _mapped(read)

    # -- writing ------------------------------------------------------------

    def prepare(self, key: str, parent: str = "", labels: Labels = None) -> list[Mount]:
        """Create an ACTIVE snapshot ``key`` on the COMMITTED ``parent``; its mounts."""
        req = self._req(
            pb.PrepareSnapshotRequest, key=key, parent=parent, labels=convert.labels_of(labels)
        )
        return convert.mounts_from_pb(self._call(self._stub.Prepare, req).mounts)

    def view(self, key: str, parent: str = "", labels: Labels = None) -> list[Mount]:
        """Create a read-only VIEW ``key`` of the COMMITTED ``parent``; its mounts."""
        req = self._req(
            pb.ViewSnapshotRequest, key=key, parent=parent, labels=convert.labels_of(labels)
        )
        return convert.mounts_from_pb(self._call(self._stub.View, req).mounts)

    def commit(
        self, name: str, key: str, *, labels: Labels = None, parent: str | None = None
    ) -> None:
        """Commit the ACTIVE ``key`` as ``name`` (``parent``: containerd 2.2's rebase)."""
        req = self._req(
            pb.CommitSnapshotRequest,
            name=name,
            key=key,
            labels=convert.labels_of(labels),
            parent=parent or "",
        )
        self._call(self._stub.Commit, req)

    def update(self, info: Info, *fieldpaths: str) -> Info:
        """Change the labels of ``info.name``; its new Info (paths as OverlaySnapshotter's)."""
        msg = self._req(pb.Info, name=info.name, labels=info.labels)
        req = self._req(pb.UpdateSnapshotRequest, info=msg)
        if fieldpaths:
            try:
                req.update_mask.paths.extend(fieldpaths)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"update {info.name!r}: {e}") from None
        return convert.info_from_pb(self._call(self._stub.Update, req).info)

    def remove(self, key: str) -> None:
        """Remove the snapshot ``key`` of any kind."""
        self._call(self._stub.Remove, self._req(pb.RemoveSnapshotRequest, key=key))

    def cleanup(self) -> None:
        """Ask the server to remove directories no live snapshot owns."""
        self._call(self._stub.Cleanup, self._req(pb.CleanupRequest))

    # -- internals ----------------------------------------------------------

    def _req(self, cls: type[Any], **fields: Any) -> Any:
        if cls is not pb.Info:
            fields["snapshotter"] = self.snapshotter
        return convert.build(cls, **fields)

    def _call(self, method: Any, request: Any) -> Any:
        return _mapped(lambda: method(request, timeout=self._timeout, metadata=self._metadata))


def _mapped(call: Callable[[], T]) -> T:
    """``call()``, with a failed RPC raised as the pysnap error of its status code."""
    try:
        return call()
    except grpc.RpcError as e:
        raise convert.error_from_rpc(e) from None


_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", convert.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", convert.MAX_MESSAGE_BYTES),
)

__all__ = ["RemoteSnapshotter", "target_of"]
