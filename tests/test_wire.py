"""snapcore.wire against protobuf's own parser: the bytes are containerd's messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysnap import Info, Kind
from pysnap.server import convert
from pysnap.server._proto import snapshots_pb2 as pb
from snapcore import wire

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # no lone surrogates
int64 = st.integers(-(2**63), 2**63 - 1)
infos = st.builds(
    Info,
    kind=st.sampled_from(list(Kind)),
    name=text,
    parent=text,
    labels=st.dictionaries(text, text, max_size=5),
    created_ns=int64,
    updated_ns=int64,
)


def expected(info: Info) -> pb.Info:
    """The message protobuf builds for ``info`` (Timestamps: floored seconds, nanos >= 0)."""
    msg = pb.Info(name=info.name, parent=info.parent, kind=int(info.kind), labels=info.labels)  # type: ignore[arg-type]
    msg.created_at.seconds, msg.created_at.nanos = divmod(info.created_ns, 10**9)
    msg.updated_at.seconds, msg.updated_at.nanos = divmod(info.updated_ns, 10**9)
    return msg


@given(st.lists(infos, max_size=25), st.integers(1, 7))
def test_messages_parse_as_protobuf_builds_them(items: list[Info], per: int) -> None:
    messages = wire.encode_info_messages(items, per)
    assert len(messages) == -(-len(items) // per)  # ceil; none for no Infos
    parsed = [i for m in messages for i in pb.ListSnapshotsResponse.FromString(m).info]
    assert parsed == [expected(i) for i in items]
    assert [convert.info_from_pb(i) for i in parsed] == items  # every nanosecond back


@given(infos)
def test_one_info_is_a_stat_and_an_update_response(info: Info) -> None:
    data = convert.info_message(info)
    assert pb.StatSnapshotResponse.FromString(data).info == expected(info)
    assert pb.UpdateSnapshotResponse.FromString(data).info == expected(info)
    # As protobuf's serializer: Timestamps always present, defaults left out.
    assert len(data) == len(pb.StatSnapshotResponse(info=expected(info)).SerializeToString())


@pytest.mark.parametrize("ns", [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 1])
def test_extreme_times(ns: int) -> None:
    # floor division without a multiply: secs * 10**9 overflowed int64 near -2**63 (UBSan)
    info = Info(kind=Kind.VIEW, created_ns=ns, updated_ns=ns)
    assert pb.StatSnapshotResponse.FromString(convert.info_message(info)).info == expected(info)


def test_defaults_are_left_out_and_times_are_present() -> None:
    data = convert.info_message(Info(kind=Kind.VIEW))
    assert (
        data
        == pb.StatSnapshotResponse(
            info=pb.Info(kind=pb.VIEW, created_at={}, updated_at={})
        ).SerializeToString()
    )


def test_bad_input_is_refused() -> None:
    good = Info(name="a")
    with pytest.raises(ValueError, match="per_message"):
        wire.encode_info_messages([good], 0)
    with pytest.raises(ValueError, match="6-tuple"):
        wire.encode_info_messages([(1, "a")], 1)
    with pytest.raises(TypeError):
        wire.encode_info_messages([(1, "a", "", ["not a dict"], 0, 0)], 1)
    with pytest.raises(TypeError):
        wire.encode_info_messages([(1, b"bytes", "", {}, 0, 0)], 1)
    with pytest.raises(UnicodeEncodeError):
        wire.encode_info_messages([(1, "\udcff", "", {}, 0, 0)], 1)
    with pytest.raises(OverflowError):
        wire.encode_info_messages([(1, "a", "", {}, 2**64, 0)], 1)
