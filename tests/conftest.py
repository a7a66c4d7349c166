"""Shared fixtures: the `root` marker and deep-tree-safe temporary folders."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import du_tree, root, run, targets  # noqa: F401 (fixtures of the CLI tests)

# the `containerd` fixture: a private containerd on pysnap serve (containerd_env.py)
from containerd_env import containerd  # noqa: F401
from mountpoints import detach_all_under, mounted  # noqa: F401 (`mounted`: a fixture)

# `open_sn`: each test that takes it runs in process and served over gRPC (served.py)
from served import open_sn  # noqa: F401

from pysnap.fsutil import remove_tree


def _have_overlay() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


IS_ROOT = os.geteuid() == 0
HAVE_OVERLAY = _have_overlay()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT and HAVE_OVERLAY:
        return
    reason = "needs uid 0" if not IS_ROOT else "needs overlayfs in /proc/filesystems"
    skip = pytest.mark.skip(reason=f"mount test: {reason}")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the run, nothing the tests mounted under this session's tmp_path base remains.

    Scoped to this session's own base directory: the mount table is shared by
    every process on the machine, and others' mounts are not ours to judge.
    """
    base = str(tmp_path_factory.getbasetemp())
    yield
    left = detach_all_under(base)
    if left:
        pytest.fail(f"mounts left behind (now detached): {sorted(left)}")


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary dir that uid 65534 can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pysnap-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    remove_tree(d)
