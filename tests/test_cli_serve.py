"""``pysnap serve`` as a process (signals, readiness, the socket) and the CLI's remote mode."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from containerd_env import wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from served import ServedSnapshotter, short_tmpdir

from pysnap.cli import main, remote
from pysnap.client import RemoteSnapshotter


@pytest.fixture
def sockdir() -> Iterator[str]:
    with short_tmpdir() as d:
        yield d


def start_serve(
    root: Path,
    address: str,
    *args: str,
    env: dict[str, str] | None = None,
    global_args: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pysnap",
            *global_args,
            "serve",
            "--root",
            str(root),
            "--address",
            address,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stale = _inode(address)  # a socket left by a killed server, replaced once this one serves
    wait_until(
        lambda: _inode(address) not in (None, stale) or proc.poll() is not None, what="the socket"
    )
    return proc


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def health(address: str) -> int:
    with grpc.insecure_channel(f"unix:{address}") as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return int(r.status)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_until_a_signal_then_exit_0(tmp_path: Path, sockdir: str, sig: int) -> None:
    address = f"{sockdir}/run/pysnap.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{sockdir}/notify")
    notify.settimeout(30)
    proc = start_serve(
        tmp_path / "root", address, "--no-sync", env={"NOTIFY_SOCKET": f"{sockdir}/notify"}
    )
    try:
        assert notify.recv(100) == b"READY=1"  # sent once the socket answers
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
        with RemoteSnapshotter(address) as c:
            c.prepare("a", labels={"x": "1"})
    finally:
        code, err = stop(proc, sig)
    assert code == 0, err
    assert notify.recv(100) == b"STOPPING=1"
    notify.close()
    assert not os.path.exists(address)
    assert main(["--root", str(tmp_path / "root"), "info", "a", "--json"]) == 0  # it was stored


def _blocked(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigBlk:"))


def test_only_the_main_thread_takes_the_stop_signals(tmp_path: Path, sockdir: str) -> None:
    """Python runs handlers in the main thread: a SIGTERM the kernel gave another thread
    would never wake it. Every other thread of a serving server blocks SIGTERM and SIGINT."""
    address = f"{sockdir}/pysnap.sock"
    proc = start_serve(tmp_path / "root", address, "--no-sync")
    try:
        with RemoteSnapshotter(address) as c:  # calls start the rpc pool's threads too
            for i in range(8):
                c.prepare(f"k{i}")
        stop_bits = 1 << (signal.SIGTERM - 1) | 1 << (signal.SIGINT - 1)
        others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
        assert others  # grpc's threads
        assert _blocked(proc.pid, proc.pid) & stop_bits == 0
        for tid in others:
            try:
                blocked = _blocked(proc.pid, tid)
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            assert blocked & stop_bits == stop_bits, tid
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_a_second_server_is_refused_a_killed_ones_socket_is_replaced(
    tmp_path: Path, sockdir: str
) -> None:
    address = f"{sockdir}/pysnap.sock"
    first = start_serve(tmp_path / "root", address, "--no-sync")
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pysnap", "serve", "--root", str(tmp_path / "other"),
             "--address", address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 4 and "live" in second.stderr  # AlreadyExistsError's code
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.kill()  # SIGKILL: its socket stays behind
        first.communicate(timeout=30)
    assert os.path.exists(address)
    third = start_serve(
        tmp_path / "root", address, "--no-sync", global_args=("--map-size", "12345678")
    )
    try:
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert stop(third)[0] == 0


def test_print_config_is_containerds_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["serve", "--root", str(tmp_path / "r"), "--address", "/run/x/p.sock", "--print-config"]
        )
        == 0
    )
    out = capsys.readouterr().out
    plugin = tomllib.loads(out)["proxy_plugins"]["pysnap"]
    assert plugin == {
        "type": "snapshot",
        "address": "/run/x/p.sock",
        "capabilities": [],  # no "rebase": containerd #13030
        "exports": {"root": str(tmp_path / "r")},
    }
    assert "garbage collector" in out and "1.6 reads only type and address" in out
    # --json: the same settings as data
    args = ["--root", str(tmp_path / "r"), "serve", "--address", "/run/x/p.sock"]
    assert main(["--json", *args, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == tomllib.loads(out)


def test_remote_mode_runs_the_snapshot_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServedSnapshotter(tmp_path / "root", sync=False) as served:
        remote_args = ["--address", served.server.address]
        assert main([*remote_args, "prepare", "a", "--label", "k=v"]) == 0
        assert main([*remote_args, "commit", "c", "a"]) == 0
        assert main([*remote_args, "view", "v", "c"]) == 0
        capsys.readouterr()
        assert main([*remote_args, "ls", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert sorted((d["name"], d["kind"]) for d in listed) == [("c", "committed"), ("v", "view")]
        assert main([*remote_args, "rm", "c"]) == 5  # has a child: failed precondition
        assert main([*remote_args, "info", "nope"]) == 3  # not found, from the status code
        assert main([*remote_args, "rm", "v", "c"]) == 0
        capsys.readouterr()
        assert main([*remote_args, "cleanup", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"dry_run": False, "removed": None}
        assert main([*remote_args, "cleanup", "--dry-run"]) == 12  # the RPC has no dry run
        assert served.walk() == []
        assert served.backend.walk() == []
        assert main([*remote_args, "serve", "--print-config"]) == 2  # serve is local only


def test_remote_namespace_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    def ns(**given: str | None) -> str | None:
        args = argparse.Namespace(
            **{"address": "/x.sock", "snapshotter": None, "namespace": None, **given}
        )
        with remote.open_remote(args) as c:
            return c.namespace

    monkeypatch.delenv("CONTAINERD_NAMESPACE", raising=False)
    assert ns() is None  # pysnap serve: no header
    assert ns(snapshotter="overlayfs") == "default"  # containerd's socket
    monkeypatch.setenv("CONTAINERD_NAMESPACE", "k8s.io")
    assert ns(snapshotter="overlayfs") == "k8s.io"
    assert ns(snapshotter="overlayfs", namespace="mine") == "mine"


def test_without_the_server_extra(tmp_path: Path) -> None:
    # grpc made unimportable: --print-config still works; serving and the
    # remote mode say what is missing (UnimplementedError, exit 12).
    code = f"""
import sys
sys.modules["grpc"] = None
from pysnap.cli import main
codes = [main(["--root", {str(tmp_path)!r}, "serve", "--print-config"]),
         main(["--root", {str(tmp_path)!r}, "serve", "--address", {str(tmp_path / "s")!r}]),
         main(["--address", {str(tmp_path / "s")!r}, "ls"])]
print(codes)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines()[-1] == "[0, 12, 12]", r.stderr
    assert r.stderr.count("pip install 'pysnap[server]'") == 2
