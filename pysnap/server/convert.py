"""The wire: pysnap's Info, Mount, Usage and errors <-> containerd's protobuf messages.

The one module that knows the messages of ``containerd.services.snapshots.v1``
(``_proto/snapshots.proto``); the service and the client call only this.
Times travel as ``google.protobuf.Timestamp`` with their nanoseconds; kinds as
containerd's enum, whose numbers are ``Kind``'s. The Infos the server sends
are encoded by ``snapcore.wire`` (the hot path of List and Stat); everything
else goes through the generated protobuf classes. Errors cross as gRPC status
codes through the one table in ``pysnap.errors``, in both directions, with the
message unchanged (containerd's ``errgrpc.ToGRPC`` and ``ToNative``) up to
MAX_DETAIL_BYTES: the message travels in a header, and gRPC drops a call
whose headers pass 16 KiB.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from snapcore.wire import encode_info_messages

from ..errors import (
    InvalidArgumentError,
    MapFullError,
    SnapshotError,
    from_grpc_status,
    kind_of,
)
from ..types import Info, Kind, Mount, Usage
from ._proto import mount_pb2, snapshots_pb2

pb = snapshots_pb2
M = TypeVar("M", bound=Message)

#: containerd's defaults.DefaultMaxRecvMsgSize and DefaultMaxSendMsgSize.
MAX_MESSAGE_BYTES = 16 << 20
#: Infos per ListSnapshotsResponse, as containerd's snapshotservice sends them,
#: in at most LIST_BATCH_BYTES: 100 Infos with big labels pass the 16 MiB a
#: client takes. (One Info over 16 MiB, which only the library can make, cannot go.)
LIST_BATCH = 100
LIST_BATCH_BYTES = 4 << 20
SERVICE_NAME = "containerd.services.snapshots.v1.Snapshots"
#: The header that carries containerd's namespace (namespaces.GRPCHeader).
NAMESPACE_HEADER = "containerd-namespace"
#: The trailer in which a pysnap server names the kind of its error (ErrorKind.code).
ERROR_KIND_TRAILER = "pysnap-error"
#: An error message longer than this (UTF-8) is cut: percent-encoded, it stays under 8 KiB.
MAX_DETAIL_BYTES = 2000
_NS = 1_000_000_000


# -- requests: bytes <-> messages ------------------------------------------------


def parse(cls: type[M], data: bytes) -> M:
    """Decode a request; bytes that are not one (bad UTF-8 in a string...) are InvalidArgument."""
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise InvalidArgumentError(f"malformed {cls.DESCRIPTOR.name}: {e}") from None


def build(cls: type[M], **fields: object) -> M:
    """A message from Python values; a value the wire cannot carry is InvalidArgument.

    Protobuf refuses a str with lone surrogates (not UTF-8), a non-str key or
    label, an int out of range: the same kinds of input the snapshotter refuses.
    """
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{cls.DESCRIPTOR.name}: {e}") from None


def labels_of(labels: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """Labels as a message field takes them (None stays unset)."""
    if labels is not None and not isinstance(labels, Mapping):
        raise InvalidArgumentError(f"labels must be a mapping, not {type(labels).__name__}")
    return labels


# -- Info, Mount, Usage --------------------------------------------------------------


def info_messages(infos: list[Info]) -> list[bytes]:
    """The List stream: ListSnapshotsResponse bytes of LIST_BATCH Infos or
    LIST_BATCH_BYTES each (none for none).

    Encoded by snapcore.wire (about 7 us an Info as protobuf objects, well
    under that there), with every nanosecond of the times and Kind's numbers,
    which are containerd's.
    """
    return encode_info_messages(infos, LIST_BATCH, LIST_BATCH_BYTES)


def info_message(info: Info) -> bytes:
    """StatSnapshotResponse or UpdateSnapshotResponse bytes: both are ``Info info = 1``."""
    return encode_info_messages((info,), 1)[0]


def ns_of(ts: Timestamp) -> int:
    """A Timestamp as nanoseconds since the epoch."""
    return ts.seconds * _NS + ts.nanos


def info_from_pb(msg: snapshots_pb2.Info) -> Info:
    """An Info from the wire. A kind outside containerd's enum is an error of the peer."""
    try:
        kind = Kind(msg.kind)
    except ValueError:
        raise SnapshotError(f"snapshot {msg.name!r}: unknown kind {msg.kind} on the wire") from None
    return Info(
        kind=kind,
        name=msg.name,
        parent=msg.parent,
        labels=dict(msg.labels),
        created_ns=ns_of(msg.created_at),
        updated_ns=ns_of(msg.updated_at),
    )


def update_target(msg: snapshots_pb2.Info) -> Info:
    """The Info an Update request names: only its name and labels count.

    containerd's metadata store sends no kind (UNKNOWN) and the snapshotter
    ignores kind, parent and times, so whatever they hold is not an error.
    """
    return Info(name=msg.name, labels=dict(msg.labels))


def mounts_to_pb(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def mounts_from_pb(msgs: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(type=m.type, source=m.source, options=tuple(m.options)) for m in msgs]


def usage_to_pb(usage: Usage) -> snapshots_pb2.UsageResponse:
    return pb.UsageResponse(size=usage.size, inodes=usage.inodes)


def usage_from_pb(msg: snapshots_pb2.UsageResponse) -> Usage:
    return Usage(msg.size, msg.inodes)


# -- errors ----------------------------------------------------------------------------


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception, from the one table (``kind_of``)."""
    code: grpc.StatusCode = grpc.StatusCode[kind_of(exc).grpc_status]
    return code


def detail_of(exc: BaseException) -> str:
    """The status message for ``exc``: its text, cut to MAX_DETAIL_BYTES."""
    data = str(exc).encode("utf-8", "backslashreplace")  # a lone surrogate (path bytes): \udcff
    if len(data) <= MAX_DETAIL_BYTES:
        return data.decode()
    kept = data[:MAX_DETAIL_BYTES].decode("utf-8", "ignore")  # no half character
    return f"{kept}... ({len(data) - len(kept.encode())} more bytes)"


def unix_target(path: str) -> str:
    """The grpc target of a unix socket path: grpc percent-decodes it (``%41`` is ``A``)."""
    return "unix:" + urllib.parse.quote(path)


def error_trailer(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that names the kind of a pysnap error (none for others)."""
    return ((ERROR_KIND_TRAILER, kind_of(exc).code),) if isinstance(exc, SnapshotError) else ()


def error_from_rpc(err: grpc.RpcError) -> SnapshotError:
    """The pysnap error for a failed call: the class of its status, its message unchanged.

    RESOURCE_EXHAUSTED is a MapFullError only when the server's trailer says
    so; gRPC's own (a message or headers over its limits) is not about the
    map size.
    """
    code = err.code()
    details = err.details() or code.name.lower()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailer = dict(err.trailing_metadata() or ())
        if trailer.get(ERROR_KIND_TRAILER) != MapFullError.code:
            return SnapshotError(f"{code.name}: {details}")
    return from_grpc_status(code.name, details)
