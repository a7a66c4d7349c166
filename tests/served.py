"""A snapshotter served over gRPC in this process, for running one test suite on both.

``served_snapshotter(root, **options)`` opens an OverlaySnapshotter on
``root``, serves it with ``pysnap.server.SnapshotServer`` on a socket in a
fresh /tmp directory (pytest's tmp_path can exceed a socket path's 107
bytes), and returns a ``RemoteSnapshotter`` connected to it whose ``root`` is
the served root, so tests can look at the files as they do in process.
Closing it (or leaving its ``with``) closes the client, stops the server and
closes the served snapshotter, as closing an OverlaySnapshotter closes it.

``IMPLS`` names both kinds, and the ``open_sn`` fixture (conftest.py imports
it) runs a test once on each: in process ("local") and served ("remote").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator

import pytest

from pysnap import OverlaySnapshotter
from pysnap.client import RemoteSnapshotter
from pysnap.fsutil import remove_tree
from pysnap.server import SnapshotServer


@contextlib.contextmanager
def short_tmpdir(prefix: str = "pysnap-") -> Iterator[str]:
    """A fresh directory under /tmp with a short path (for unix sockets), removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        remove_tree(path)


class ServedSnapshotter(RemoteSnapshotter):
    """A RemoteSnapshotter that owns its server and knows the root it serves."""

    def __init__(self, root: str | os.PathLike[str], **options: object) -> None:
        self._owned = contextlib.ExitStack()
        with self._owned as stack:
            sockdir = tempfile.mkdtemp(prefix="pysnap-sock-", dir="/tmp")
            stack.callback(remove_tree, sockdir)
            backend = stack.enter_context(OverlaySnapshotter(root, **options))  # type: ignore[arg-type]
            server = stack.enter_context(
                SnapshotServer(backend, os.path.join(sockdir, "s.sock"), workers=4)
            )
            super().__init__(server.address)
            stack.callback(super().close)
            self.root = backend.root
            self.backend = backend
            self.server = server
            self._owned = stack.pop_all()

    def close(self) -> None:
        self._owned.close()  # a second close finds the stack empty


served_snapshotter = ServedSnapshotter


IMPLS: dict[str, Callable[..., contextlib.AbstractContextManager[OverlaySnapshotter]]] = {
    "local": OverlaySnapshotter,
    "remote": served_snapshotter,  # type: ignore[dict-item]  # the same API
}


@pytest.fixture(params=IMPLS)
def open_sn(request: pytest.FixtureRequest) -> Iterator[Callable[..., OverlaySnapshotter]]:
    """``open_sn(root, **options)``: a snapshotter of this run's kind, closed at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda root, **options: stack.enter_context(IMPLS[request.param](root, **options))
