#!/usr/bin/env python3
"""Regenerate the Python modules of pysnap/server/_proto/*.proto (grpcio-tools).

    python scripts/gen_protos.py           # rewrite the committed modules
    python scripts/gen_protos.py --check   # exit 1 if they are stale

The modules are committed so that ``pip install .`` needs no grpcio-tools;
tests/test_server_proto.py runs ``--check``. The import path of each .proto is
its path from the repository root, so the modules import each other as
``pysnap.server._proto.*`` (containerd's own ``types/mount.proto`` path would
make a module named ``types``, which is the standard library's).
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join("pysnap", "server", "_proto")
PROTOS = ("mount.proto", "snapshots.proto")
GRPC_PROTOS = ("snapshots.proto",)  # the ones that declare a service


def generated_names() -> list[str]:
    """The module files generate() writes, relative to PROTO_DIR."""
    names = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
        if proto in GRPC_PROTOS:
            names.append(f"{stem}_pb2_grpc.py")
    return names


def generate(out: str) -> None:
    """Write the modules of every .proto under ``out`` (which mirrors the repository)."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for proto in PROTOS:
        args = [
            "protoc",
            f"--proto_path={ROOT}",
            f"--proto_path={include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
        ]
        if proto in GRPC_PROTOS:
            args.append(f"--grpc_python_out={out}")
        if protoc.main([*args, os.path.join(ROOT, PROTO_DIR, proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    if not argv:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        stale = [
            name
            for name in generated_names()
            if not os.path.exists(os.path.join(ROOT, PROTO_DIR, name))
            or not filecmp.cmp(
                os.path.join(tmp, PROTO_DIR, name), os.path.join(ROOT, PROTO_DIR, name), False
            )
        ]
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/gen_protos.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
