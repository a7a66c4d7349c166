"""containerd's Snapshots gRPC service over any snapshotter: thin handlers.

Each handler decodes its request, calls the snapshotter, encodes the answer
(``convert``), as containerd's ``contrib/snapshotservice`` does: every rule
lives in the snapshotter, so a client sees exactly what the library does. An
exception becomes the status code of its row in ``pysnap.errors`` with its
message unchanged (cut at convert.MAX_DETAIL_BYTES), and a pysnap error's
kind in the ``pysnap-error`` trailer. The ``snapshotter`` field of each request and the
``containerd-namespace`` header are ignored, as containerd's service ignores
them.

Requests arrive as bytes and are parsed here rather than by grpcio, so a
request that does not decode (bad UTF-8 in a label...) is INVALID_ARGUMENT,
not the INTERNAL grpcio would answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from ..errors import SnapshotError
from ..types import Info, Mount, Usage
from . import convert
from ._proto import snapshots_pb2 as pb

log = logging.getLogger(__name__)

_EMPTY = Empty()


class Snapshotter(Protocol):
    """What the service calls: OverlaySnapshotter's API (or a RemoteSnapshotter's)."""

    def prepare(self, key: str, parent: str = "", labels: Any = None) -> list[Mount]: ...
    def view(self, key: str, parent: str = "", labels: Any = None) -> list[Mount]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def commit(
        self, name: str, key: str, *, labels: Any = None, parent: str | None = None
    ) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def update(self, info: Info, *fieldpaths: str) -> Info: ...
    def walk(self, *filters: str) -> list[Info]: ...
    def usage(self, key: str) -> Usage: ...
    def cleanup(self) -> object: ...  # OverlaySnapshotter's returns what it removed


class SnapshotsService:
    """The handlers, one per RPC, each a call of the snapshotter."""

    def __init__(self, sn: Snapshotter) -> None:
        self._sn = sn

    def Prepare(self, r: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        mounts = self._sn.prepare(r.key, r.parent, dict(r.labels))
        return pb.PrepareSnapshotResponse(mounts=convert.mounts_to_pb(mounts))

    def View(self, r: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        mounts = self._sn.view(r.key, r.parent, dict(r.labels))
        return pb.ViewSnapshotResponse(mounts=convert.mounts_to_pb(mounts))

    def Mounts(self, r: pb.MountsRequest) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=convert.mounts_to_pb(self._sn.mounts(r.key)))

    def Commit(self, r: pb.CommitSnapshotRequest) -> Empty:
        self._sn.commit(r.name, r.key, labels=dict(r.labels), parent=r.parent or None)
        return _EMPTY

    def Remove(self, r: pb.RemoveSnapshotRequest) -> Empty:
        self._sn.remove(r.key)
        return _EMPTY

    def Stat(self, r: pb.StatSnapshotRequest) -> bytes:  # a StatSnapshotResponse
        return convert.info_message(self._sn.stat(r.key))

    def Update(self, r: pb.UpdateSnapshotRequest) -> bytes:  # an UpdateSnapshotResponse
        # No mask, or an empty one: every mutable field, which is the labels.
        return convert.info_message(
            self._sn.update(convert.update_target(r.info), *r.update_mask.paths)
        )

    def List(self, r: pb.ListSnapshotsRequest) -> list[bytes]:  # ListSnapshotsResponses
        # walk() is read in one transaction and raises before the first message.
        return convert.info_messages(self._sn.walk(*r.filters))

    def Usage(self, r: pb.UsageRequest) -> pb.UsageResponse:
        return convert.usage_to_pb(self._sn.usage(r.key))

    def Cleanup(self, r: pb.CleanupRequest) -> Empty:
        self._sn.cleanup()
        return _EMPTY


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, SnapshotError | OSError):
        log.debug("%s: %s", method, exc)
    else:
        log.exception("%s failed unexpectedly", method)
    context.set_trailing_metadata(convert.error_trailer(exc))
    context.abort(convert.status_of(exc), convert.detail_of(exc))
    raise AssertionError("context.abort returned")  # it always raises


def _parse(method: str, request_cls: type[Message], data: bytes) -> Message:
    request = convert.parse(request_cls, data)
    if log.isEnabledFor(logging.DEBUG):  # `serve --log-level debug`: every request, as sent
        from google.protobuf import text_format

        log.debug("%s %s", method, text_format.MessageToString(request, as_one_line=True))
    return request


def _unary(
    method: str, call: Callable[[Any], Message | bytes], request_cls: type[Message]
) -> grpc.RpcMethodHandler:
    def handle(data: bytes, context: grpc.ServicerContext) -> Message | bytes:
        try:
            return call(_parse(method, request_cls, data))
        except Exception as e:
            _abort(context, method, e)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=_serialize)


def _stream(
    method: str, call: Callable[[Any], Iterable[bytes]], request_cls: type[Message]
) -> grpc.RpcMethodHandler:
    def handle(data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            return iter(call(_parse(method, request_cls, data)))
        except Exception as e:
            _abort(context, method, e)

    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=_serialize)


def _serialize(msg: Message | bytes) -> bytes:
    # Infos come encoded already (convert.info_message); the rest are messages.
    return msg if type(msg) is bytes else msg.SerializeToString()  # type: ignore[union-attr]


def generic_handler(sn: Snapshotter) -> grpc.GenericRpcHandler:
    """The Snapshots service over ``sn``, for ``grpc.Server.add_generic_rpc_handlers``."""
    service = SnapshotsService(sn)
    methods = convert.pb.DESCRIPTOR.services_by_name["Snapshots"].methods
    handlers = {}
    for m in methods:
        request_cls = getattr(pb, m.input_type.name)
        wrap = _stream if m.server_streaming else _unary
        handlers[m.name] = wrap(m.name, getattr(service, m.name), request_cls)
    return grpc.method_handlers_generic_handler(convert.SERVICE_NAME, handlers)
