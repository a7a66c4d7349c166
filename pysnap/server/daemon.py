"""The life of a server: its socket, readiness, the health service, a graceful stop.

``SnapshotServer`` serves the Snapshots service (``service``) and gRPC's
health service on a unix socket:

- The socket's directory is made 0700 when it does not exist (an existing one
  is left as it is: it may be /tmp); the socket itself is 0600.
- One server per address: it holds an flock on ``<address>.lock`` while it
  runs (two started at once cannot both pass the check below). The lock
  file stays; removing it would race the next server.
- The socket is bound under a temporary name, made 0600, and renamed into
  place once the server answers: the address exists only while a server
  serves it (an address whose name is under 7 bytes, too long for a
  temporary name beside it, is bound in place, made 0600 before it listens).
  A stale socket left by a killed server is replaced; a live one (something
  answers a connect) is refused, and so is a path that is not a socket.
- ``stop()`` removes the address first (no new connections), reports
  NOT_SERVING, lets calls in flight finish within ``grace`` seconds, then
  cancels the rest. ``serve()`` does that on SIGTERM or SIGINT and exits 0.
- Readiness: the socket, the health service's SERVING, and systemd's
  ``READY=1`` where ``NOTIFY_SOCKET`` is set.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import stat
import threading
from collections.abc import Sequence
from concurrent import futures
from types import FrameType, TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from ..metastore import DEFAULT_MAP_SIZE
from ..overlay import OverlaySnapshotter
from . import convert
from .service import Snapshotter, generic_handler

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
DEFAULT_GRACE = 10.0
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1

GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", convert.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", convert.MAX_MESSAGE_BYTES),
)


class SnapshotServer:
    """The Snapshots and health services of ``sn`` on the unix socket ``address``.

    ``start()`` returns once the server answers on ``address``; ``stop()``
    ends it. A context manager does both. The snapshotter is not closed here.
    """

    def __init__(
        self, sn: Snapshotter, address: str | os.PathLike[str], *, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.address = os.path.abspath(os.fspath(address))
        if len(os.fsencode(self.address)) > _SUN_PATH_MAX:
            raise InvalidArgumentError(
                f"address {self.address!r} is longer than a unix socket path may be "
                f"({_SUN_PATH_MAX} bytes)"
            )
        if workers < 1:
            raise InvalidArgumentError(f"workers must be at least 1, not {workers}")
        self._sn = sn
        self._workers = workers
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self._inode: tuple[int, int] | None = None
        self._lock = -1

    def start(self) -> None:
        """Bind, start and publish the socket. Raises AlreadyExistsError (live server there)."""
        directory = os.path.dirname(self.address)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        lock = _lock_address(self.address)
        try:
            _refuse_live(self.address)
            server, st = self._bind_and_publish(directory)
        except BaseException:
            os.close(lock)
            raise
        self._lock = lock
        self._inode = (st.st_dev, st.st_ino)
        self._server = server
        for name in ("", convert.SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", convert.SERVICE_NAME, self.address)

    def _bind_and_publish(self, directory: str) -> tuple[grpc.Server, os.stat_result]:
        # A temporary name no longer than the address where it can be (a random
        # one of 7 characters or more), so any address that fits has room for it.
        name_length = max(7, len(os.fsencode(os.path.basename(self.address))))
        tmp = os.path.join(directory, "." + secrets.token_hex(name_length)[: name_length - 1])
        if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
            tmp = self.address  # no room for a temporary name: a stale socket goes first
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        server = grpc.server(
            futures.ThreadPoolExecutor(self._workers, thread_name_prefix="pysnap-rpc"),
            options=GRPC_OPTIONS,
        )
        server.add_generic_rpc_handlers((generic_handler(self._sn),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            bound = server.add_insecure_port(convert.unix_target(tmp))
        except RuntimeError as e:  # grpc says only "Failed to bind"
            raise OSError(errno.EADDRNOTAVAIL, f"cannot bind the socket: {e}", tmp) from None
        if bound == 0:
            raise OSError(errno.EADDRNOTAVAIL, "cannot bind the socket", tmp)
        try:
            os.chmod(tmp, 0o600)  # before it serves: bound in place, it is the address
            server.start()
            os.rename(tmp, self.address)  # replaces a stale socket in one step
            return server, os.stat(self.address)
        except BaseException:
            server.stop(None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Stop accepting, let calls in flight finish within ``grace`` seconds, cancel the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        self._health.enter_graceful_shutdown()
        # Refuse new calls first, then unlink: a client sharing an open
        # connection must not get a call in between (grpc pools subchannels).
        stopped = server.stop(grace)
        self._unlink_own_socket()
        stopped.wait()
        os.close(self._lock)  # the next server may start
        self._lock = -1
        log.info("stopped serving on %s", self.address)

    def _unlink_own_socket(self) -> None:
        # Only ours: another server may have taken the address since.
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.address)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.address)

    def __enter__(self) -> SnapshotServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _lock_address(address: str) -> int:
    """The descriptor of an flock on ``<address>.lock``; AlreadyExistsError if a server holds it."""
    fd = _open_lock_file(f"{address}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyExistsError(f"address {address!r} is served by a live server") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock_file(path: str) -> int:
    """Open the lock file, made if absent. Read-only, 0644 and never O_CREAT on an
    existing one: a later server of another user (the file stays) can open it, even
    in a sticky /tmp, where fs.protected_regular refuses O_CREAT on another's file."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO: no wait
    while True:
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # made meanwhile by another server: open that one
            continue


def _refuse_live(path: str) -> None:
    """Raise unless ``path`` is free or a stale socket (nothing accepts on it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPreconditionError(f"address {path!r} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
        except ConnectionRefusedError:
            log.info("replacing the stale socket %s", path)
            return
    raise AlreadyExistsError(f"address {path!r} is served by a live server")


def sd_notify(state: str) -> None:
    """Tell systemd ``state`` (``READY=1``...) where ``NOTIFY_SOCKET`` is set; else nothing."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:  # systemd gone is no reason to stop serving
        log.warning("sd_notify %s to %s failed: %s", state, addr, e)


def serve(
    root: str | os.PathLike[str],
    address: str | os.PathLike[str],
    *,
    sync: bool = True,
    async_remove: bool = False,
    mount_options: Sequence[str] = (),
    upperdir_label: bool = False,
    workers: int = DEFAULT_WORKERS,
    grace: float = DEFAULT_GRACE,
    map_size: int | None = None,
    adopt_layers: bool = False,
) -> int:
    """Serve an OverlaySnapshotter on ``root`` at ``address`` until SIGTERM or SIGINT; 0.

    Must run in the main thread (it installs the signal handlers, and
    restores the previous ones before it returns).
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stopping.set()

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = {s: signal.signal(s, on_signal) for s in stop_signals}
    # Python runs handlers in the main thread only, when it wakes. A stop signal
    # the kernel gave to one of grpc's threads would leave the main thread asleep
    # in stopping.wait() for good: a server left hung by a CI run had taken its
    # SIGTERM (none pending, the handler installed) and never logged "stopping".
    # So every thread started meanwhile (grpc's, and the ones they start)
    # inherits them blocked, and the main thread alone takes them.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        with OverlaySnapshotter(
            root,
            sync=sync,
            async_remove=async_remove,
            mount_options=mount_options,
            upperdir_label=upperdir_label,
            map_size=DEFAULT_MAP_SIZE if map_size is None else map_size,
            adopt_layers=adopt_layers,
        ) as sn:
            server = SnapshotServer(sn, address, workers=workers)
            try:
                server.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                sd_notify("READY=1")
                stopping.wait()
                sd_notify("STOPPING=1")
            finally:
                server.stop(grace)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
