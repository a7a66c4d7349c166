"""A bare grpcio server of the Snapshots API that returns fixed answers: the floor.

What a Python server costs before it does any work: grpcio's thread-pool
server, the same options as ``pysnap serve``, requests parsed, answers
serialized, no snapshotter. bench_server.py runs it as its own process, as
``pysnap serve`` runs, and drives both with the same client.

    python benchmarks/floor_server.py SOCKET

List answers with N Infos when its first filter is the number N (else 1,000).
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp

from pysnap.server import convert, daemon
from pysnap.server._proto import mount_pb2
from pysnap.server._proto import snapshots_pb2 as pb

_INFO = pb.Info(
    name="default/1/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    parent="default/0/sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
    kind=pb.COMMITTED,
    created_at=Timestamp(seconds=1_700_000_000, nanos=123_456_789),
    updated_at=Timestamp(seconds=1_700_000_000, nanos=123_456_789),
    labels={"containerd.io/snapshot.ref": "sha256:0123456789abcdef"},
)
_MOUNTS = [
    mount_pb2.Mount(
        type="overlay",
        source="overlay",
        options=[f"lowerdir={':'.join(f'/var/lib/pysnap/snapshots/{n}/fs' for n in range(1000))}"],
    )
]


def _list(request: pb.ListSnapshotsRequest) -> list[pb.ListSnapshotsResponse]:
    n = int(request.filters[0]) if request.filters and request.filters[0].isdigit() else 1000
    return [
        pb.ListSnapshotsResponse(info=[_INFO] * min(convert.LIST_BATCH, n - start))
        for start in range(0, n, convert.LIST_BATCH)
    ]


ANSWERS = {
    "Prepare": lambda r: pb.PrepareSnapshotResponse(mounts=_MOUNTS),
    "View": lambda r: pb.ViewSnapshotResponse(mounts=_MOUNTS),
    "Mounts": lambda r: pb.MountsResponse(mounts=_MOUNTS),
    "Commit": lambda r: Empty(),
    "Remove": lambda r: Empty(),
    "Stat": lambda r: pb.StatSnapshotResponse(info=_INFO),
    "Update": lambda r: pb.UpdateSnapshotResponse(info=_INFO),
    "Usage": lambda r: pb.UsageResponse(size=4096, inodes=1),
    "Cleanup": lambda r: Empty(),
}


def handler() -> grpc.GenericRpcHandler:
    handlers = {}
    for m in pb.DESCRIPTOR.services_by_name["Snapshots"].methods:
        request_cls = getattr(pb, m.input_type.name)
        if m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                lambda data, ctx, cls=request_cls: iter(_list(cls.FromString(data))),
                response_serializer=lambda msg: msg.SerializeToString(),
            )
        else:
            answer = ANSWERS[m.name]
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                lambda data, ctx, cls=request_cls, answer=answer: answer(cls.FromString(data)),
                response_serializer=lambda msg: msg.SerializeToString(),
            )
    return grpc.method_handlers_generic_handler(convert.SERVICE_NAME, handlers)


def main(address: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = grpc.server(
        futures.ThreadPoolExecutor(daemon.DEFAULT_WORKERS), options=daemon.GRPC_OPTIONS
    )
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(f"unix:{address}")
    server.start()
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
