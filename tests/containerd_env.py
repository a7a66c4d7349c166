"""A private containerd with pysnap as its proxy snapshotter, for integration tests.

Everything lives in one temporary directory: containerd's config, root,
state and sockets, the ``pysnap serve`` root and socket, runc's state and
ctr's fifos. The one exception is ``/run/containerd/s``, where containerd
1.6's runc shim puts its socket whatever the config says: it (and
``/run/containerd``) is removed afterwards when this module made it and it is
empty. Nothing goes in /var/lib or /etc.

Use::

    from containerd_env import SKIP_REASON, build_busybox_image, containerd_env

    pytestmark = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)

    def test_x(tmp_path, containerd):           # the fixture (conftest.py), or:
        image = build_busybox_image(tmp_path / "img", greeting="hi")
        with containerd_env() as env:            # containerd + pysnap serve, both running
            env.ctr("images", "import", "--snapshotter", "pysnap",
                    "--base-name", image.base_name, str(image.tar))
            assert env.run(image.ref).stdout == "hi\\n"

``env.ctr(*args)`` runs ``ctr --address <its socket>``; ``env.run(ref)`` is
``ctr run --rm --snapshotter pysnap`` with runc's root and the fifos inside
the directory; ``env.backend()`` is a RemoteSnapshotter of ``pysnap serve``
itself and ``env.pysnap_root`` its root. Leaving the ``with`` stops
containerd, any shim of it and ``pysnap serve`` by pid (SIGTERM, then
SIGKILL after 10 s), unmounts what is left under the directory and removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pysnap import mountinfo
from pysnap.client import RemoteSnapshotter
from pysnap.fsutil import remove_tree
from pysnap.server.containerd_config import proxy_plugin_block

#: The name containerd knows pysnap by, in the config this module writes.
SNAPSHOTTER = "pysnap"
#: How ``pysnap serve`` is started (the installed package of this checkout).
SERVE_COMMAND = (sys.executable, "-m", "pysnap", "serve")
_TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "umoci", "busybox")
_SHIM_DIR = "/run/containerd/s"


def _skip_reason() -> str:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install containerd runc umoci busybox-static)"
    if os.geteuid() != 0:
        return "needs root (containerd, mounts)"
    return ""


#: Why the integration tests cannot run here, or "" when they can.
SKIP_REASON = _skip_reason()


# -- a test image, built offline ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Image:
    """An OCI image archive for ``ctr images import --base-name BASE_NAME TAR``."""

    tar: Path
    base_name: str  # the image name ctr gives it, without the tag
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.base_name}:{self.tag}"


def build_busybox_image(
    workdir: Path,
    *,
    greeting: str = "hello from pysnap",
    base_name: str = "docker.io/pysnap/greeter",
    tag: str = "latest",
) -> Image:
    """Build an OCI image with umoci and busybox-static, offline, in ``workdir``.

    Two layers: ``/bin/busybox``, then ``/greeting``; its command prints the
    greeting (``busybox cat /greeting``). Returns the archive to import.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / "oci"
    image = f"{layout}:{tag}"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=60)

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    layers: list[Callable[[Path], None]] = [
        lambda rootfs: _install_busybox(rootfs),
        lambda rootfs: (rootfs / "greeting").write_text(greeting + "\n"),
    ]
    for n, add in enumerate(layers):
        bundle = workdir / f"bundle-{n}"  # umoci repacks a bundle once
        umoci("unpack", "--image", image, str(bundle))
        add(bundle / "rootfs")
        umoci("repack", "--image", image, str(bundle))
        remove_tree(bundle)
    umoci(
        "config", "--image", image,
        "--config.cmd", "/bin/busybox", "--config.cmd", "cat", "--config.cmd", "/greeting",
    )  # fmt: skip
    tar = workdir / "image.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(tar), "."], check=True, timeout=60)
    return Image(tar=tar, base_name=base_name, tag=tag)


def _install_busybox(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(mode=0o755, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")


# -- containerd and pysnap serve -----------------------------------------------------


@dataclasses.dataclass
class ContainerdEnv:
    """A running private containerd and the ``pysnap serve`` it uses (see the module doc)."""

    base: Path
    address: str  # containerd's gRPC socket
    pysnap_root: Path
    pysnap_address: str
    containerd: subprocess.Popen[bytes]
    pysnap: subprocess.Popen[bytes]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``ctr --address ADDRESS ARGS...``; raises with its stderr when ``check`` and it fails."""
        r = subprocess.run(
            ["ctr", "--address", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def run(
        self, ref: str, name: str = "pysnap-test", *args: str
    ) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm --snapshotter pysnap REF NAME ARGS...``, state inside ``base``."""
        return self.ctr(
            "run", "--rm", "--snapshotter", SNAPSHOTTER,
            "--runc-root", str(self.base / "runc"), "--fifo-dir", str(self.base / "fifo"),
            ref, name, *args,
        )  # fmt: skip

    def backend(self) -> RemoteSnapshotter:
        """A client of ``pysnap serve`` itself (containerd's keys, as containerd made them)."""
        return RemoteSnapshotter(self.pysnap_address)

    def through_containerd(self, namespace: str = "default") -> RemoteSnapshotter:
        """A client of containerd's own socket for the pysnap snapshotter in ``namespace``."""
        return RemoteSnapshotter(self.address, snapshotter=SNAPSHOTTER, namespace=namespace)

    def logs(self) -> str:
        """What containerd and pysnap serve logged so far (for failure messages)."""
        return "".join(
            f"--- {name}\n{(self.base / name).read_text(errors='replace')[-4000:]}"
            for name in ("containerd.log", "pysnap.log")
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "it") -> None:
    """Poll ``predicate`` every 50 ms until true; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def config_toml(base: Path, pysnap_root: Path, pysnap_address: str) -> str:
    """containerd 1.6's config (version 2) with every path inside ``base``, and
    the block ``pysnap serve --print-config`` prints."""
    return f"""\
version = 2
root = "{base}/containerd/root"
state = "{base}/containerd/state"
# CRI would reach for /etc/cni, /opt/cni and the host network
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{base}/c.sock"
[ttrpc]
  address = "{base}/c.sock.ttrpc"
[debug]
  address = "{base}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

{proxy_plugin_block(str(pysnap_root), pysnap_address, SNAPSHOTTER)}"""


@contextlib.contextmanager
def containerd_env(serve_args: Sequence[str] = ()) -> Iterator[ContainerdEnv]:
    """Start ``pysnap serve`` (with ``serve_args``) and a containerd using it; stop both after."""
    if SKIP_REASON:
        raise RuntimeError(SKIP_REASON)
    # Short: containerd's and pysnap's socket paths must fit in 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="pysnap-ctd-", dir="/tmp"))
    made = [d for d in ("/run/containerd", _SHIM_DIR) if not os.path.exists(d)]
    with contextlib.ExitStack() as stack:
        stack.callback(remove_tree, base)
        stack.callback(_remove_empty_dirs, reversed(made))
        stack.callback(_unmount_under, base)
        for d in ("runc", "fifo"):
            (base / d).mkdir()
        pysnap_root = base / "pysnap"
        pysnap_address = str(base / "pysnap.sock")
        pysnap = _start(
            [*SERVE_COMMAND, "--root", str(pysnap_root), "--address", pysnap_address, *serve_args],
            base / "pysnap.log",
        )
        stack.callback(_stop, pysnap)
        wait_until(lambda: _ready(pysnap, pysnap_address), what="pysnap serve's socket")
        (base / "config.toml").write_text(config_toml(base, pysnap_root, pysnap_address))
        containerd = _start(
            ["containerd", "--config", str(base / "config.toml")], base / "containerd.log"
        )
        stack.callback(_stop_shims, str(base / "c.sock"))
        stack.callback(_stop, containerd)
        wait_until(lambda: _ready(containerd, str(base / "c.sock")), what="containerd's socket")
        env = ContainerdEnv(
            base, str(base / "c.sock"), pysnap_root, pysnap_address, containerd, pysnap
        )
        yield env


@pytest.fixture
def containerd() -> Iterator[ContainerdEnv]:
    """A ContainerdEnv for one test (conftest.py makes it every test's); skips where
    containerd, runc, umoci or busybox is missing, or without root."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    with containerd_env() as env:
        yield env


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _ready(proc: subprocess.Popen[bytes], socket_path: str) -> bool:
    """Whether ``proc`` accepts on its socket (a stale socket file is not readiness)."""
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args[0]} exited with {proc.returncode} before it was ready")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: by pid, only the process this module started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_shims(address: str) -> None:
    """Stop the shims of the containerd at ``address`` (they outlive it), by pid."""
    for pid in _shims_of(address):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _shims_of(address: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and os.fsencode(address) in argv:
            pids.append(int(entry))
    return pids


def _unmount_under(base: Path) -> None:
    from snapcore import mount as _sys

    for m in sorted(mountinfo.mounts_under(str(base)), key=lambda m: -len(m.mount_point)):
        with contextlib.suppress(OSError):
            _sys.umount(m.mount_point, _sys.MNT_DETACH)


def _remove_empty_dirs(dirs: Iterator[str]) -> None:
    for d in dirs:
        with contextlib.suppress(OSError):  # not empty: another containerd uses it now
            os.rmdir(d)
