"""The gRPC service on the wire: what a client other than ours sends and sees.

The snapshotter's semantics run through the server in test_snapshotter.py
("remote"); here: the messages themselves (times, kinds, batches, masks), the
error table on the wire, bad input from a peer, concurrency, the socket's life.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from privileges import as_nobody
from served import ServedSnapshotter, short_tmpdir

from pysnap import Info, Kind, OverlaySnapshotter
from pysnap.client import RemoteSnapshotter, target_of
from pysnap.errors import (
    AlreadyExistsError,
    CanceledError,
    ClosedError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MapFullError,
    NotFoundError,
    SnapshotError,
)
from pysnap.server import SnapshotServer, convert, daemon
from pysnap.server._proto import snapshots_pb2 as pb
from pysnap.server._proto import snapshots_pb2_grpc

METHOD = "/containerd.services.snapshots.v1.Snapshots/"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedSnapshotter]:
    with ServedSnapshotter(tmp_path / "root", sync=False) as s:
        yield s


@pytest.fixture
def channel(served: ServedSnapshotter) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix:{served.server.address}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> snapshots_pb2_grpc.SnapshotsStub:
    return snapshots_pb2_grpc.SnapshotsStub(channel)


def raw_call(channel: grpc.Channel, method: str, data: bytes) -> bytes:
    """Send ``data`` as the request bytes of ``method``, whatever they hold."""
    call = channel.unary_unary(METHOD + method)
    result: bytes = call(data, timeout=10)
    return result


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    code: grpc.StatusCode = e.value.code()
    return code


# -- messages ----------------------------------------------------------------------


def test_times_keep_nanoseconds_and_kinds_are_containerds(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub
) -> None:
    stub.Prepare(pb.PrepareSnapshotRequest(key="a", labels={"x": "1"}))
    local = served.backend.stat("a")
    msg = stub.Stat(pb.StatSnapshotRequest(key="a")).info
    assert msg.kind == pb.ACTIVE == Kind.ACTIVE
    assert convert.ns_of(msg.created_at) == local.created_ns  # every nanosecond
    assert (msg.created_at.seconds, msg.created_at.nanos) == divmod(local.created_ns, 10**9)
    stub.Commit(pb.CommitSnapshotRequest(name="c", key="a"))
    stub.View(pb.ViewSnapshotRequest(key="v", parent="c"))
    kinds = {i.name: i.kind for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info}
    assert kinds == {"c": pb.COMMITTED, "v": pb.VIEW}
    assert pb.Kind.Name(pb.VIEW) == "VIEW" and Kind.VIEW == 1


def test_list_streams_batches_of_100(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub
) -> None:
    for n in range(250):
        served.view(f"default/{n}/view {n}")  # containerd-like keys, with a space
    sizes = [len(r.info) for r in stub.List(pb.ListSnapshotsRequest())]
    assert sizes == [100, 100, 50]
    only = [
        i.name
        for r in stub.List(pb.ListSnapshotsRequest(filters=['name=="default/7/view 7"']))
        for i in r.info
    ]
    assert only == ["default/7/view 7"]
    served.cleanup()
    for n in range(250):
        served.remove(f"default/{n}/view {n}")
    assert list(stub.List(pb.ListSnapshotsRequest())) == []


def test_update_honours_the_field_mask(stub: snapshots_pb2_grpc.SnapshotsStub) -> None:
    stub.Prepare(pb.PrepareSnapshotRequest(key="a", labels={"a": "1", "b": "2"}))

    def update(labels: dict[str, str], paths: list[str] | None, kind: int = 0) -> dict[str, str]:
        info = pb.Info(name="a", kind=kind, parent="ignored", labels=labels)  # type: ignore[arg-type]
        mask = None if paths is None else FieldMask(paths=paths)
        r = stub.Update(pb.UpdateSnapshotRequest(info=info, update_mask=mask))
        assert r.info.kind == pb.ACTIVE and r.info.parent == ""
        return dict(r.info.labels)

    assert update({"b": "3", "c": "4"}, ["labels.b"]) == {"a": "1", "b": "3"}
    assert update({}, ["labels.a"]) == {"b": "3"}  # empty deletes
    assert update({"z": "9"}, None) == {"z": "9"}  # no mask: all labels replaced
    assert update({"y": "8"}, []) == {"y": "8"}
    # containerd's metadata store sends no kind; an unknown number is ignored too
    assert update({"k": "v"}, ["labels"], kind=0) == {"k": "v"}
    assert update({"k": "w"}, ["labels"], kind=99) == {"k": "w"}
    assert code_of(lambda: update({}, ["kind"])) == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Stat(pb.StatSnapshotRequest(key="a")).info.labels == {"k": "w"}


def test_commit_with_parent_on_the_wire(stub: snapshots_pb2_grpc.SnapshotsStub) -> None:
    stub.Prepare(pb.PrepareSnapshotRequest(key="base"))
    stub.Commit(pb.CommitSnapshotRequest(name="p", key="base"))
    stub.Prepare(pb.PrepareSnapshotRequest(key="extract-1 sha256:x"))
    stub.Commit(pb.CommitSnapshotRequest(name="sha256:x", key="extract-1 sha256:x", parent="p"))
    assert stub.Stat(pb.StatSnapshotRequest(key="sha256:x")).info.parent == "p"


# -- errors ----------------------------------------------------------------------


def test_errors_cross_as_containerds_codes_with_messages_unchanged(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub, tmp_path: Path
) -> None:
    served.prepare("a")
    served.commit("c", "a")
    served.view("v", "c")
    cases = [
        (lambda: stub.Stat(pb.StatSnapshotRequest(key="nope")), grpc.StatusCode.NOT_FOUND),
        (
            lambda: stub.View(pb.ViewSnapshotRequest(key="v", parent="c")),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (lambda: stub.Mounts(pb.MountsRequest(key="c")), grpc.StatusCode.FAILED_PRECONDITION),
        (
            lambda: stub.Remove(pb.RemoveSnapshotRequest(key="c")),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="")), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="x", parent="v")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == code
    # containerd's suite greps a refused remove for "remove"
    with pytest.raises(grpc.RpcError) as e:
        stub.Remove(pb.RemoveSnapshotRequest(key="c"))
    assert "remove" in e.value.details()
    # and the client maps each code back to the class, message unchanged
    with pytest.raises(FailedPreconditionError, match=r"^cannot remove snapshot with child: 'c'$"):
        served.remove("c")
    for cls, call in (
        (NotFoundError, lambda: served.stat("nope")),
        (AlreadyExistsError, lambda: served.view("v", "c")),
        (InvalidArgumentError, lambda: served.prepare("x", "v")),
    ):
        with pytest.raises(cls):
            call()


def test_an_oserror_is_unknown_with_its_message(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub
) -> None:
    served.prepare("a")
    snaps = Path(served.root, "snapshots")
    os.rename(snaps / "1", snaps / "moved")  # the upper dir is gone under the record
    with pytest.raises(grpc.RpcError) as e:
        stub.Usage(pb.UsageRequest(key="a"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # commit/usage: snapshot vanished
    os.rename(snaps / "moved", snaps / "1")
    os.chmod(snaps / "1", 0o000)
    try:
        if os.geteuid() != 0:  # root reads through mode 000
            assert code_of(lambda: stub.Usage(pb.UsageRequest(key="a"))) == grpc.StatusCode.UNKNOWN
    finally:
        os.chmod(snaps / "1", 0o755)


def test_closed_store_reads_as_in_process(tmp_path: Path) -> None:
    with ServedSnapshotter(tmp_path / "root", sync=False) as s:
        s.backend.close()  # the store closed under the server
        with pytest.raises(SnapshotError) as local:
            s.backend.stat("a")
        with pytest.raises(SnapshotError) as remote:
            s.stat("a")
        # the same class and message as in process (ClosedError is UNAVAILABLE)
        assert (type(remote.value), str(remote.value)) == (type(local.value), str(local.value))


# -- bad input from a peer --------------------------------------------------------


def test_bytes_that_are_not_a_request_are_invalid_argument(
    served: ServedSnapshotter, channel: grpc.Channel
) -> None:
    good = pb.PrepareSnapshotRequest(key="k", labels={"a": "b"}).SerializeToString()
    bad_utf8 = good.replace(b"k", b"\xff", 1)
    for data in (bad_utf8, b"\xff\xff\xff", good[:-1]):
        with pytest.raises(grpc.RpcError) as e:
            raw_call(channel, "Prepare", data)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, data
    assert served.walk() == []
    raw_call(channel, "Prepare", good)  # and the server still serves
    assert [i.name for i in served.walk()] == ["k"]


def test_garbage_labels_and_huge_messages_change_nothing(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub
) -> None:
    served.prepare("a")
    before = served.walk()
    for labels in ({"": "v"}, {"k": "v" * 5000}, {"k" * 4096: "v"}):
        code = code_of(
            lambda labels=labels: stub.Prepare(pb.PrepareSnapshotRequest(key="b", labels=labels))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, labels
    huge = {f"k{n}": "v" * 4000 for n in range(4200)}  # about 17 MB: over containerd's 16 MiB
    assert (
        code_of(lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="b", labels=huge)))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert served.walk() == before
    with pytest.raises(InvalidArgumentError):
        served.prepare("b", labels={"k": 1})  # type: ignore[dict-item]
    assert served.walk() == before


class _Raising:
    """A snapshotter whose stat() raises ``error``."""

    def __init__(self, sn: OverlaySnapshotter, error: Exception) -> None:
        self._sn, self._error = sn, error

    def __getattr__(self, name: str) -> object:
        return getattr(self._sn, name)

    def stat(self, key: str) -> Info:
        raise self._error


@pytest.mark.parametrize("char", ["x", "\u00e9", "\U0001f600", "\udcff"])
def test_a_long_error_message_is_cut_not_lost(tmp_path: Path, char: str) -> None:
    # gRPC drops a call whose status message (a percent-encoded header) passes
    # 16 KiB, and the client then saw RESOURCE_EXHAUSTED instead of the error.
    message = "bad key " + char * 100_000
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        backend = _Raising(sn, NotFoundError(message))
        with (
            SnapshotServer(backend, f"{d}/s.sock") as server,  # type: ignore[arg-type]
            RemoteSnapshotter(server.address, timeout=10) as c,
        ):
            with pytest.raises(NotFoundError) as e:
                c.stat("a")
    got = str(e.value)
    shown = char.encode("utf-8", "backslashreplace").decode()  # path bytes: \\xff
    assert got.startswith("bad key " + shown * 10) and got.endswith(" more bytes)")
    assert len(got.encode()) < convert.MAX_DETAIL_BYTES + 100


def test_an_error_message_with_path_bytes_arrives_escaped(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        backend = _Raising(sn, NotFoundError("no such file: /x/\udcff"))
        with (
            SnapshotServer(backend, f"{d}/s.sock") as server,  # type: ignore[arg-type]
            RemoteSnapshotter(server.address, timeout=10) as c,
        ):
            with pytest.raises(NotFoundError, match=r"^no such file: /x/\\udcff$"):
                c.stat("a")


def test_list_batches_stay_under_the_message_limit(served: ServedSnapshotter) -> None:
    # 100 Infos a message, as containerd sends them, would be 20 MB here.
    labels = {f"k{n}": "v" * 4000 for n in range(1000)}  # 4 MB of labels each
    for n in range(5):
        served.backend.prepare(f"big{n}", labels=labels)
    assert sorted(i.name for i in served.walk()) == [f"big{n}" for n in range(5)]
    messages = convert.info_messages(served.backend.walk())
    assert len(messages) == 5 and max(map(len, messages)) < convert.LIST_BATCH_BYTES


def test_a_long_bad_filter_is_invalid_argument_over_the_wire(served: ServedSnapshotter) -> None:
    for text in ('labels."' + "a" * 20_000, "name==" + "x" * 20_000 + ",,"):
        with pytest.raises(InvalidArgumentError, match=r"invalid filter of 200\d\d characters at"):
            served.walk(text)


def test_resource_exhausted_is_map_full_only_when_the_store_is_full(tmp_path: Path) -> None:
    with ServedSnapshotter(tmp_path / "root", sync=False, map_size=1 << 20) as s:
        huge = {f"k{n}": "v" * 4000 for n in range(4200)}  # over gRPC's 16 MiB
        with pytest.raises(SnapshotError, match="RESOURCE_EXHAUSTED") as e:
            s.prepare("b", labels=huge)
        assert type(e.value) is SnapshotError  # gRPC's limit says nothing of the map size
        big = {f"k{i}": "v" * 4000 for i in range(16)}
        with pytest.raises(MapFullError, match="map size"):
            for n in range(1000):
                s.prepare(f"s{n}", labels=big)


def test_a_deadline_and_a_cancel_are_their_own_kinds(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        slow = _BlockingUsage(sn)
        sn.prepare("a")
        with SnapshotServer(slow, f"{d}/s.sock") as server:  # type: ignore[arg-type]
            try:
                with RemoteSnapshotter(server.address, timeout=0.5) as c:
                    with pytest.raises(DeadlineExceededError):
                        c.usage("a")
            finally:
                slow.release.set()
    # A peer whose own context was cancelled (containerd's socket) answers CANCELLED.
    with short_tmpdir() as d:
        peer = grpc.server(futures.ThreadPoolExecutor(1))

        def stat(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.CANCELLED, "context canceled")

        peer.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    convert.SERVICE_NAME, {"Stat": grpc.unary_unary_rpc_method_handler(stat)}
                ),
            )
        )
        peer.add_insecure_port(f"unix:{d}/peer.sock")
        peer.start()
        try:
            with RemoteSnapshotter(f"{d}/peer.sock", timeout=10) as c:
                with pytest.raises(CanceledError, match=r"^context canceled$"):
                    c.stat("a")
        finally:
            peer.stop(None)


def test_a_client_that_leaves_mid_stream_disturbs_no_one(
    served: ServedSnapshotter, stub: snapshots_pb2_grpc.SnapshotsStub
) -> None:
    for n in range(1000):
        served.view(f"v{n}", labels={"pad": "x" * 1000})
    stream = stub.List(pb.ListSnapshotsRequest())
    assert len(next(stream).info) == 100
    # a client that stops reading holds one worker, not the server
    with RemoteSnapshotter(served.server.address) as other:
        assert other.stat("v999").name == "v999"
        assert len(other.walk()) == 1000
    stream.cancel()
    assert len(served.walk()) == 1000
    assert served.stat("v1").name == "v1"


def test_100_concurrent_clients(served: ServedSnapshotter) -> None:
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with RemoteSnapshotter(served.server.address) as c:
                c.prepare(f"k{n}", labels={"n": str(n)})
                assert c.stat(f"k{n}").labels == {"n": str(n)}
                c.commit(f"c{n}", f"k{n}")
                with pytest.raises(AlreadyExistsError):
                    c.view(f"c{n}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(served.walk("kind==committed")) == 100


class _BlockingUsage:
    """A snapshotter whose usage() waits until released: a walk that takes long."""

    def __init__(self, sn: OverlaySnapshotter) -> None:
        self._sn = sn
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sn, name)

    def usage(self, key: str) -> object:
        self.entered.set()
        assert self.release.wait(30)
        return self._sn.usage(key)


def test_a_long_usage_never_blocks_stat_or_list(tmp_path: Path) -> None:
    with (
        OverlaySnapshotter(tmp_path / "root", sync=False) as sn,
        short_tmpdir() as d,
    ):
        slow = _BlockingUsage(sn)
        with (
            SnapshotServer(slow, f"{d}/s.sock", workers=4) as server,  # type: ignore[arg-type]
            RemoteSnapshotter(server.address) as c,
        ):
            c.prepare("a")
            result: list[object] = []
            walker = threading.Thread(target=lambda: result.append(c.usage("a")))
            walker.start()
            try:
                assert slow.entered.wait(30)
                assert c.stat("a").kind == Kind.ACTIVE  # answered while Usage runs
                assert [i.name for i in c.walk()] == ["a"]
            finally:
                slow.release.set()
                walker.join()
            assert result[0] == sn.usage("a")


# -- the socket's life --------------------------------------------------------------


def test_socket_modes_and_readiness(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        address = f"{d}/new/dir/s.sock"
        server = SnapshotServer(sn, address)
        assert not os.path.exists(address)
        with server:
            assert stat.S_IMODE(os.stat(f"{d}/new/dir").st_mode) == 0o700
            st = os.lstat(address)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            # no temporary name left; the lock that keeps a second server off stays
            assert sorted(os.listdir(f"{d}/new/dir")) == ["s.sock", "s.sock.lock"]
            with grpc.insecure_channel(f"unix:{address}") as ch:
                check = health_pb2_grpc.HealthStub(ch).Check
                for service in ("", convert.SERVICE_NAME):
                    r = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                    assert r.status == health_pb2.HealthCheckResponse.SERVING
        assert not os.path.exists(address)  # gone when the server stops


def test_stale_socket_replaced_live_one_and_non_socket_refused(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        address = f"{d}/s.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(address)
        stale.close()  # a socket file nothing listens on: a killed server's
        with SnapshotServer(sn, address), RemoteSnapshotter(address) as c:
            c.prepare("a")
            with pytest.raises(AlreadyExistsError, match="live"):
                SnapshotServer(sn, address).start()
            assert c.stat("a").name == "a"  # the live one is untouched
        Path(address).write_text("not a socket")
        with pytest.raises(FailedPreconditionError, match="not a socket"):
            SnapshotServer(sn, address).start()
        assert Path(address).read_text() == "not a socket"
        assert sorted(os.listdir(d)) == ["s.sock", "s.sock.lock"]


def test_stop_lets_calls_in_flight_finish(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        slow = _BlockingUsage(sn)
        server = SnapshotServer(slow, f"{d}/s.sock")  # type: ignore[arg-type]
        server.start()
        with RemoteSnapshotter(server.address) as c:
            c.prepare("a")
            result: list[object] = []
            walker = threading.Thread(target=lambda: result.append(c.usage("a")))
            walker.start()
            assert slow.entered.wait(30)
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 30})
            stopper.start()
            while os.path.exists(server.address):  # stop() unlinks it first
                threading.Event().wait(0.01)
            with pytest.raises(SnapshotError):  # no new calls: nothing is listening
                RemoteSnapshotter(server.address, timeout=5).stat("a")
            slow.release.set()
            walker.join()
            stopper.join()
            assert result == [sn.usage("a")]  # the call in flight finished


def test_two_servers_started_at_once_on_one_address(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        servers = [SnapshotServer(sn, f"{d}/s.sock") for _ in range(8)]
        barrier = threading.Barrier(len(servers))
        outcomes: list[object] = [None] * len(servers)

        def start(n: int) -> None:
            barrier.wait()
            try:
                servers[n].start()
                outcomes[n] = "serving"
            except AlreadyExistsError as e:
                outcomes[n] = e

        threads = [threading.Thread(target=start, args=(n,)) for n in range(len(servers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert outcomes.count("serving") == 1, outcomes
        finally:
            for server in servers:
                server.stop(None)
        with SnapshotServer(sn, f"{d}/s.sock"):  # the lock went with the server
            pass


@pytest.mark.root
def test_the_lock_a_server_leaves_lets_another_users_server_start(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        os.chmod(d, 0o1777)  # a /tmp of its own
        with SnapshotServer(sn, f"{d}/s.sock"):
            pass
        assert os.stat(f"{d}/s.sock.lock").st_uid == 0  # it stays, root's

        def lock_as_nobody() -> str:
            os.close(daemon._lock_address(f"{d}/s.sock"))
            return "locked"

        assert as_nobody(lock_as_nobody) == "locked"
        os.mkfifo(f"{d}/f.sock.lock")  # odd, but no reason to hang
        with SnapshotServer(sn, f"{d}/f.sock"):
            pass


@pytest.mark.parametrize("name", ["s", "p%41.sock", "h#x?y.sock"])
@pytest.mark.parametrize("length", [80, 100, 107])
def test_an_address_up_to_the_socket_limit_is_served(
    tmp_path: Path, length: int, name: str
) -> None:
    # Near the limit a short name binds in place; grpc would percent-decode a path.
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn, short_tmpdir() as d:
        address = f"{d}/" + "s" * (length - len(d) - 1 - len(name)) + name
        assert len(address) == length
        with SnapshotServer(sn, address), RemoteSnapshotter(address, timeout=10) as c:
            c.prepare("a")
            assert stat.S_IMODE(os.lstat(address).st_mode) == 0o600
        assert sorted(os.listdir(d)) == sorted([os.path.basename(address) + ".lock"])


def test_addresses_are_socket_paths_as_ctr_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert target_of("e/s.sock") == f"unix:{tmp_path}/e/s.sock"  # relative, with a /
    assert target_of("./s.sock") == f"unix:{tmp_path}/s.sock"
    assert target_of("/run/x.sock") == "unix:/run/x.sock"
    assert target_of("localhost:5000") == "localhost:5000"  # a grpc target as it is
    assert target_of("unix:/run/x.sock") == "unix:/run/x.sock"
    assert target_of("dns:///h:1") == "dns:///h:1"
    assert target_of("passthrough:///x/y") == "passthrough:///x/y"
    assert target_of("ipv4:127.0.0.1:5") == "ipv4:127.0.0.1:5"
    assert target_of("a:b/s.sock") == f"unix:{tmp_path}/a%3Ab/s.sock"  # a path, quoted for grpc
    assert target_of("s.sock") == "s.sock"  # no such socket here: a name
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("s.sock")
    sock.close()
    assert target_of("s.sock") == f"unix:{tmp_path}/s.sock"  # a socket that exists
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn:
        os.mkdir("e")
        with SnapshotServer(sn, "e/s.sock"), RemoteSnapshotter("e/s.sock", timeout=10) as c:
            c.prepare("a")
            assert [i.name for i in c.walk()] == ["a"]


def test_address_too_long_for_a_socket(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "root", sync=False) as sn:
        with pytest.raises(InvalidArgumentError, match="longer"):
            SnapshotServer(sn, "/tmp/" + "x" * 120)


def test_client_of_nothing_is_unavailable() -> None:
    with short_tmpdir() as d, RemoteSnapshotter(f"{d}/none.sock", timeout=5) as c:
        with pytest.raises(ClosedError):  # UNAVAILABLE
            c.stat("a")
        with pytest.raises(Exception, match="sync"):
            c.sync()


def test_info_from_the_wire_with_an_unknown_kind_is_an_error() -> None:
    with pytest.raises(SnapshotError, match="unknown kind"):
        convert.info_from_pb(pb.Info(name="x", kind=7))  # type: ignore[arg-type]
    info = Info(kind=Kind.VIEW, name="x", created_ns=123456789123456789)
    back = pb.StatSnapshotResponse.FromString(convert.info_message(info)).info
    assert convert.info_from_pb(back) == info
