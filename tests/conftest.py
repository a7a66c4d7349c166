"""Shared fixtures: the `root` marker and deep-tree-safe temporary folders."""

from __future__ import annotations

import os

import pytest


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
