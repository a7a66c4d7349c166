"""containerd 1.6's overlay snapshotter in process: the baseline driver.

``benchmarks/containerd_overlay/main.go`` is built against Debian's containerd
sources (packages ``golang-go`` and ``golang-github-containerd-containerd-dev``)
and runs as one long-lived process that answers one command per line. Its
times are measured in Go around the snapshotter calls, so the pipe costs
containerd nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "containerd_overlay")
GOCODE = "/usr/share/gocode"
_OVERLAY_PKG = f"{GOCODE}/src/github.com/containerd/containerd/snapshots/overlay"


def missing() -> str | None:
    """Why the driver cannot be built here, or None."""
    if shutil.which("go") is None:
        return "no `go` on PATH (Debian package golang-go)"
    if not os.path.isdir(_OVERLAY_PKG):
        return f"no containerd sources in {_OVERLAY_PKG} (golang-github-containerd-containerd-dev)"
    return None


def build(outdir: str) -> str:
    """Build the driver into ``outdir``; its path. Offline: GOPATH mode, Debian's sources."""
    exe = os.path.join(outdir, "containerd-overlay-bench")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{outdir}/gopath:{GOCODE}",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    subprocess.run(["go", "build", "-o", exe, "."], cwd=SOURCE, env=env, check=True)
    return exe


class Driver:
    """One driver process; ``call("stat", root, 10, *keys)`` returns its JSON answer."""

    def __init__(self, exe: str) -> None:
        self._proc = subprocess.Popen(
            [exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def call(self, *args: object) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(" ".join(map(str, args)) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"containerd driver exited ({self._proc.wait()}) on {args[0]}")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"containerd driver, {args[0]}: {out['error']}")
        return out

    @property
    def pid(self) -> int:
        return self._proc.pid

    def seconds(self, *args: object) -> float:
        """The Go-side time of one command, in seconds."""
        return float(self.call(*args)["ns"]) / 1e9

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait()
