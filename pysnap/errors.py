"""The error kinds of pysnap, after containerd's errdefs.

Context goes in the message, the kind in the class. An ``OSError`` from the
kernel is never wrapped: it keeps its type, errno, filename and filename2.
"""


class SnapshotError(Exception):
    """Base of every error pysnap raises on purpose."""

    code = "unknown"  # errdefs kind, printed by --json
    exit_code = 1


class NotFoundError(SnapshotError):
    """Key or parent does not exist (errdefs.ErrNotFound)."""

    code, exit_code = "not_found", 3


class AlreadyExistsError(SnapshotError):
    """Key or name is taken (errdefs.ErrAlreadyExists)."""

    code, exit_code = "already_exists", 4


class FailedPreconditionError(SnapshotError):
    """The snapshot is not in a state that allows this (errdefs.ErrFailedPrecondition)."""

    code, exit_code = "failed_precondition", 5


class InvalidArgumentError(SnapshotError):
    """Malformed key, label, filter or field path (errdefs.ErrInvalidArgument)."""

    code, exit_code = "invalid_argument", 6


__all__ = [
    "AlreadyExistsError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "SnapshotError",
]
