"""The public value types: the shapes DESIGN.md fixes for embedders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle

import pytest

import pysnap
from pysnap import Info, Kind, Mount, Usage


def test_layer_shape() -> None:
    layer = pysnap.Layer(diff_id="sha256:a", digest="sha256:b", size=1, media_type="m", entries=2)
    assert dataclasses.astuple(layer) == ("sha256:a", "sha256:b", 1, "m", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.size = 3  # type: ignore[misc]


def test_exports() -> None:
    assert set(pysnap.__all__) == {
        "OverlaySnapshotter",
        "Kind",
        "Info",
        "Usage",
        "Mount",
        "Layer",
        "mount_all",
        "unmount",
        "unmount_all",
        "mounted",
        "errors",
    }
    for name in pysnap.__all__:
        assert getattr(pysnap, name) is not None


def test_kind() -> None:
    assert (Kind.VIEW, Kind.ACTIVE, Kind.COMMITTED) == (1, 2, 3)
    assert [str(k) for k in Kind] == ["view", "active", "committed"]
    assert Kind.parse("Committed") is Kind.COMMITTED
    with pytest.raises(ValueError):
        Kind.parse("frozen")


def test_info_by_keyword_and_immutable() -> None:
    created = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    info = Info(
        kind=Kind.COMMITTED,
        name="n",
        parent="p",
        labels={"a": "b"},
        created=created,
        updated=created,
    )
    assert (info.kind, info.name, info.parent, info.labels) == (
        Kind.COMMITTED,
        "n",
        "p",
        {"a": "b"},
    )
    assert info.created == info.updated == created
    assert info.created.tzinfo is not None and info.created.utcoffset() == dt.timedelta(0)
    assert info.created_ns == 1714979289_123456000
    with pytest.raises(AttributeError):
        info.name = "other"  # type: ignore[misc]
    assert Info(name="x") == Info(kind=Kind.ACTIVE, name="x", parent="", labels={})
    assert Info(name="x", created_ns=5).created_ns == 5


def test_info_replace_and_pickle() -> None:
    info = Info(
        kind=Kind.VIEW, name="n", labels={"a": "b"}, created_ns=10**18, updated_ns=2 * 10**18
    )
    changed = info.replace(labels={})
    assert (changed.labels, changed.name, changed.created_ns, changed.updated_ns) == (
        {},
        "n",
        10**18,
        2 * 10**18,
    )
    assert info.labels == {"a": "b"}
    assert pickle.loads(pickle.dumps(info)) == info
    assert type(pickle.loads(pickle.dumps(info))) is Info


def test_usage() -> None:
    u = Usage(size=4096, inodes=2) + Usage(8192, 3)
    assert u == Usage(12288, 5)
    assert (u.size, u.inodes) == (12288, 5)
    size, inodes = u
    assert (size, inodes) == (12288, 5)
    with pytest.raises(AttributeError):
        u.size = 0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(u)) == u


def test_mount() -> None:
    m = Mount(type="overlay", source="overlay", options=["ro", "lowerdir=/a"])  # type: ignore[arg-type]
    assert m.options == ("ro", "lowerdir=/a")
    assert Mount("bind", "/x") == Mount(type="bind", source="/x", options=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.source = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Mount("bind", "/x", "rw")  # type: ignore[arg-type]
