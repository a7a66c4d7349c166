"""Shared fixtures: the `root` marker and deep-tree-safe temporary folders."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# the `containerd` fixture: a private containerd on pysnap serve (containerd_env.py)
from containerd_env import containerd  # noqa: F401

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


def _mounts_under(base: str) -> set[bytes]:
    """Mount points under ``base``, as /proc/self/mountinfo lists them."""
    prefix = os.fsencode(os.path.realpath(base)) + b"/"
    with open("/proc/self/mountinfo", "rb") as f:
        points = (line.split(b" ")[4] for line in f)
        # mountinfo escapes space, tab, newline and backslash as \ooo
        return {
            p
            for p in (re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), q) for q in points)
            if p.startswith(prefix)
        }


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the run, nothing the tests mounted under this session's tmp_path base remains.

    Scoped to this session's own base directory: the mount table is shared by
    every process on the machine, and others' mounts are not ours to judge.
    """
    base = str(tmp_path_factory.getbasetemp())
    yield
    left = _mounts_under(base)
    if not left:
        return
    from snapcore import mount as _sys

    for point in sorted(left, key=len, reverse=True):
        with contextlib.suppress(OSError):
            _sys.umount(point, _sys.MNT_DETACH)
    pytest.fail(f"mounts left behind (now detached): {sorted(os.fsdecode(p) for p in left)}")


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary dir that uid 65534 can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pysnap-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    remove_tree(d)
