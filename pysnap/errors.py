"""The error kinds of pysnap, after containerd's errdefs, and the one table of them.

Context goes in the message, the kind in the class. An ``OSError`` from the
kernel is never wrapped: it keeps its type, errno, filename and filename2.

Every kind has one class, one CLI exit code and one gRPC status code, here and
nowhere else; the CLI, the server and the client all read this table:

==========================  ====  ===================
class                       exit  gRPC status
==========================  ====  ===================
NotFoundError               3     NOT_FOUND
AlreadyExistsError          4     ALREADY_EXISTS
FailedPreconditionError     5     FAILED_PRECONDITION
InvalidArgumentError        6     INVALID_ARGUMENT
OSError, StoreOSError       7     UNKNOWN
ClosedError                 8     UNAVAILABLE
CorruptStoreError           9     DATA_LOSS
MapFullError                10    RESOURCE_EXHAUSTED
UnimplementedError          12    UNIMPLEMENTED
CanceledError               13    CANCELLED
DeadlineExceededError       14    DEADLINE_EXCEEDED
SnapshotError (any other)   1     UNKNOWN
==========================  ====  ===================

The last two come only from gRPC itself: a call cancelled, or past its
``timeout``. RESOURCE_EXHAUSTED is a MapFullError only when a pysnap server
says so (the ``pysnap-error`` trailer); gRPC's own (a message over 16 MiB)
is a plain SnapshotError.

containerd 1.6 maps only InvalidArgument, NotFound, AlreadyExists,
FailedPrecondition, Unavailable, Unimplemented, Canceled and DeadlineExceeded
back to errors of its own (errdefs.FromGRPC); the others read as UNKNOWN there,
with the message kept.
"""

from __future__ import annotations

import errno as _errno
from typing import NamedTuple


class SnapshotError(Exception):
    """Base of every error pysnap raises on purpose."""

    code = "unknown"  # errdefs kind, printed by --json
    exit_code = 1
    grpc_status = "UNKNOWN"  # the name of a grpc.StatusCode member


class NotFoundError(SnapshotError):
    """Key or parent does not exist (errdefs.ErrNotFound)."""

    code, exit_code, grpc_status = "not_found", 3, "NOT_FOUND"


class AlreadyExistsError(SnapshotError):
    """Key or name is taken (errdefs.ErrAlreadyExists)."""

    code, exit_code, grpc_status = "already_exists", 4, "ALREADY_EXISTS"


class FailedPreconditionError(SnapshotError):
    """The snapshot is not in a state that allows this (errdefs.ErrFailedPrecondition)."""

    code, exit_code, grpc_status = "failed_precondition", 5, "FAILED_PRECONDITION"


class InvalidArgumentError(SnapshotError):
    """Malformed key, label, filter or field path (errdefs.ErrInvalidArgument)."""

    code, exit_code, grpc_status = "invalid_argument", 6, "INVALID_ARGUMENT"


class StoreOSError(SnapshotError, OSError):
    """The file system failed the metadata store (ENOSPC, EIO, ...).

    Also an ``OSError``: ``errno`` and ``filename`` (the store's data file) are kept.
    """

    exit_code = 7

    @property
    def code(self) -> str:  # type: ignore[override]
        return _errno.errorcode.get(self.errno or 0, "oserror")


class ClosedError(SnapshotError):
    """The snapshotter or its store was closed (containerd answers Unavailable)."""

    code, exit_code, grpc_status = "closed", 8, "UNAVAILABLE"


class CorruptStoreError(SnapshotError):
    """The metadata store or a layer directory is damaged; the message names what."""

    code, exit_code, grpc_status = "data_loss", 9, "DATA_LOSS"


class MapFullError(SnapshotError):
    """The metadata store reached its map size; reopen with a larger ``map_size``."""

    code, exit_code, grpc_status = "resource_exhausted", 10, "RESOURCE_EXHAUSTED"


class UnimplementedError(SnapshotError):
    """The operation is not available here (errdefs.ErrNotImplemented)."""

    code, exit_code, grpc_status = "unimplemented", 12, "UNIMPLEMENTED"


class CanceledError(SnapshotError):
    """The call was cancelled before it finished (errdefs.ErrCanceled)."""

    code, exit_code, grpc_status = "canceled", 13, "CANCELLED"


class DeadlineExceededError(SnapshotError):
    """The call ran past its deadline (errdefs.ErrDeadlineExceeded)."""

    code, exit_code, grpc_status = "deadline_exceeded", 14, "DEADLINE_EXCEEDED"


class ErrorKind(NamedTuple):
    """How one exception is reported: ``--json`` code, exit code, gRPC status name."""

    code: str
    exit_code: int
    grpc_status: str


OSERROR_EXIT_CODE = 7


def kind_of(exc: BaseException) -> ErrorKind:
    """The row of the table for ``exc``: a SnapshotError, or an OSError from the kernel."""
    if isinstance(exc, SnapshotError):
        return ErrorKind(exc.code, exc.exit_code, exc.grpc_status)
    if isinstance(exc, OSError):
        return ErrorKind(
            _errno.errorcode.get(exc.errno or 0, "oserror"), OSERROR_EXIT_CODE, "UNKNOWN"
        )
    return ErrorKind("unexpected", 1, "UNKNOWN")


# A status code that comes back over gRPC, to the class raised for it (errdefs.FromGRPC).
_BY_GRPC_STATUS: dict[str, type[SnapshotError]] = {
    cls.grpc_status: cls
    for cls in (
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        InvalidArgumentError,
        ClosedError,
        CorruptStoreError,
        MapFullError,
        UnimplementedError,
        CanceledError,
        DeadlineExceededError,
    )
}


def from_grpc_status(status: str, message: str) -> SnapshotError:
    """The error for a gRPC status name (``"NOT_FOUND"``, ...); unknown ones: SnapshotError."""
    return _BY_GRPC_STATUS.get(status, SnapshotError)(message)


__all__ = [
    "OSERROR_EXIT_CODE",
    "AlreadyExistsError",
    "CanceledError",
    "ClosedError",
    "CorruptStoreError",
    "DeadlineExceededError",
    "ErrorKind",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MapFullError",
    "NotFoundError",
    "SnapshotError",
    "StoreOSError",
    "UnimplementedError",
    "from_grpc_status",
    "kind_of",
]
