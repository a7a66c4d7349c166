"""The committed protobuf modules are what scripts/gen_protos.py makes of the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pysnap.server._proto import mount_pb2, snapshots_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_modules_are_fresh() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_names_and_field_numbers_are_containerds() -> None:
    # The facts of containerd's api/services/snapshots/v1/snapshots.proto and
    # api/types/mount.proto that the wire depends on.
    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    methods = "Prepare View Mounts Commit Remove Stat Update List Usage Cleanup"
    assert [m.name for m in service.methods] == methods.split()
    assert service.methods_by_name["List"].server_streaming

    def fields(msg: object) -> dict[str, int]:
        return {f.name: f.number for f in msg.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    assert fields(mount_pb2.Mount) == {"type": 1, "source": 2, "target": 3, "options": 4}
    assert mount_pb2.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    assert fields(snapshots_pb2.CommitSnapshotRequest) == {
        "snapshotter": 1, "name": 2, "key": 3, "labels": 4, "parent": 5,
    }  # fmt: skip
    assert fields(snapshots_pb2.Info) == {
        "name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6,
    }  # fmt: skip
    assert fields(snapshots_pb2.UpdateSnapshotRequest) == {
        "snapshotter": 1, "info": 2, "update_mask": 3,
    }  # fmt: skip
    assert fields(snapshots_pb2.UsageResponse) == {"size": 1, "inodes": 2}
    assert dict(snapshots_pb2.Kind.items()) == {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    }
