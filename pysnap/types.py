"""The value types of the public API: Kind, Info, Usage, and Mount (defined in pysnap.mounts).

Info and Usage are tuple subclasses: immutable, and built from a decoded
record with one ``tuple.__new__`` call, which keeps stat() cheap. Datetimes are
computed on access from the nanosecond integers they carry.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

# Mount lives with the mounting code, which needs nothing from this module
# (no import cycle); it is re-exported here, where callers long found it.
from .mounts import Mount as Mount

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class Kind(enum.IntEnum):
    """The kind of a snapshot, with containerd's numbers."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Kind:
        """``"view"``, ``"active"`` or ``"committed"`` (any case) to a Kind."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown snapshot kind {text!r}") from None


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Nanoseconds since the epoch to an aware UTC datetime (microsecond precision)."""
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: _dt.datetime) -> int:
    """An aware datetime (naive means UTC) to nanoseconds since the epoch."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class Info(tuple[Kind, str, str, dict[str, str], int, int]):
    """What a snapshotter knows of one snapshot (containerd's snapshots.Info).

    Construct by keyword: ``Info(kind=Kind.ACTIVE, name="k", labels={...})``.
    ``created``/``updated`` accept datetimes; ``created_ns``/``updated_ns``
    accept integers. The Info is immutable; ``replace()`` makes a changed copy.
    """

    __slots__ = ()

    def __new__(
        cls,
        kind: Kind | int = Kind.ACTIVE,
        name: str = "",
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        created: _dt.datetime | None = None,
        updated: _dt.datetime | None = None,
        *,
        created_ns: int | None = None,
        updated_ns: int | None = None,
    ) -> Info:
        if created_ns is None:
            created_ns = 0 if created is None else datetime_to_ns(created)
        if updated_ns is None:
            updated_ns = 0 if updated is None else datetime_to_ns(updated)
        return tuple.__new__(
            cls, (Kind(kind), name, parent, dict(labels or {}), created_ns, updated_ns)
        )

    kind: Kind = property(itemgetter(0))  # type: ignore[assignment]
    name: str = property(itemgetter(1))  # type: ignore[assignment]
    parent: str = property(itemgetter(2))  # type: ignore[assignment]
    labels: dict[str, str] = property(itemgetter(3))  # type: ignore[assignment]
    created_ns: int = property(itemgetter(4))  # type: ignore[assignment]
    updated_ns: int = property(itemgetter(5))  # type: ignore[assignment]

    @property
    def created(self) -> _dt.datetime:
        return ns_to_datetime(self[4])

    @property
    def updated(self) -> _dt.datetime:
        return ns_to_datetime(self[5])

    def replace(self, **changes: Any) -> Info:
        """A copy with the given fields changed (the keywords of the constructor)."""
        fields: dict[str, Any] = {
            "kind": self[0],
            "name": self[1],
            "parent": self[2],
            "labels": self[3],
        }
        if "created" not in changes:
            fields["created_ns"] = self[4]
        if "updated" not in changes:
            fields["updated_ns"] = self[5]
        fields.update(changes)
        return Info(**fields)

    def __repr__(self) -> str:
        return (
            f"Info(kind={self.kind!s}, name={self.name!r}, parent={self.parent!r}, "
            f"labels={self.labels!r}, created={self.created.isoformat()}, "
            f"updated={self.updated.isoformat()})"
        )

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self[0], self[1], self[2], self[3]), {
            "created_ns": self[4],
            "updated_ns": self[5],
        }


class Usage(tuple[int, int]):
    """Disk usage: ``size`` in bytes (st_blocks * 512 per distinct inode) and ``inodes``.

    Iterating gives ``(size, inodes)``; ``+`` adds two Usages.
    """

    __slots__ = ()

    def __new__(cls, size: int = 0, inodes: int = 0) -> Usage:
        return tuple.__new__(cls, (size, inodes))

    size: int = property(itemgetter(0))  # type: ignore[assignment]
    inodes: int = property(itemgetter(1))  # type: ignore[assignment]

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(self[0] + other[0], self[1] + other[1])

    def __repr__(self) -> str:
        return f"Usage(size={self[0]}, inodes={self[1]})"

    def __getnewargs__(self) -> tuple[int, int]:
        return (self[0], self[1])
