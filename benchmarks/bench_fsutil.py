"""remove_tree benchmarks (issue 10): the compiled walk, the Python walk it replaced, rm -rf.

Run: pytest benchmarks/bench_fsutil.py --benchmark-only -p no:cacheprovider

Groups, one per tree, each with:

* ``snapcore.rmtree``: ``pysnap.fsutil.remove_tree`` as it is (the walk in C);
* ``python walk (before)``: ``remove_tree`` as it was at commit BEFORE, an
  iterative fd walk in Python, read from this repository's history (skipped
  when git or the commit is not there);
* ``rm -rf``: GNU coreutils as a process (what a user would run).

Trees: ``flat-100k`` (100,000 empty files in 1,000 directories of 100) and
``chain-5000`` (a 5,000-deep chain of directories, one file at the bottom,
past shutil.rmtree's recursion limit and PATH_MAX), on tmpfs when there is
one (/dev/shm), so the figures are the walk's syscalls rather than a disk's.
Every round removes a fresh tree, made in the round's setup (not timed): a
``cp -a`` of a flat template built once, or the chain built again.
extra_info says whether the round's tree was gone afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pysnap.fsutil import remove_tree

BEFORE = "4516be6"  # the last commit with the Python walk
REPO = Path(__file__).resolve().parent.parent
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
ROUNDS = {"flat-100k": 5, "chain-5000": 9}


def _python_walk() -> Callable[[str], None] | None:
    """remove_tree of commit BEFORE, loaded from git (None if unavailable)."""
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE}:pysnap/fsutil.py"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("fsutil_before")
    sys.modules[mod.__name__] = mod  # dataclasses looks the module up
    exec(compile(src, f"{BEFORE}:pysnap/fsutil.py", "exec"), mod.__dict__)
    fn: Callable[[str], None] = mod.remove_tree
    return fn


def _rm_rf(path: str) -> None:
    subprocess.run(["rm", "-rf", path], check=True)


IMPLS: dict[str, Callable[[str], None] | None] = {
    "snapcore.rmtree": remove_tree,
    "python walk (before)": _python_walk(),
    "rm -rf": _rm_rf,
}


def _build_flat(top: Path) -> None:
    top.mkdir()
    for d in range(1000):
        os.mkdir(top / f"d{d:03d}")
        fd = os.open(top / f"d{d:03d}", _DIR)
        try:
            for f in range(100):
                os.mknod(f"f{f:02d}", 0o644 | 0o100000, dir_fd=fd)
        finally:
            os.close(fd)


def _build_chain(top: Path) -> None:
    top.mkdir()
    fd = os.open(top, _DIR)
    try:
        for _ in range(5000):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.mknod("leaf", 0o644 | 0o100000, dir_fd=fd)
    finally:
        os.close(fd)


def _copy(template: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(template), str(dst)], check=True)


@pytest.fixture(scope="session")
def work() -> Iterator[Path]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = Path(tempfile.mkdtemp(prefix="pysnap-bench-rm-", dir=base))
    try:
        _build_flat(d / "template-flat-100k")
        yield d
    finally:
        remove_tree(d)  # shutil.rmtree cannot: a chain may be left


# A fresh tree per round: a copy of the flat template, or the chain made
# again (cp -a cannot copy it: its paths are longer than PATH_MAX).
FRESH: dict[str, Callable[[Path, Path], None]] = {
    "flat-100k": lambda work, dst: _copy(work / "template-flat-100k", dst),
    "chain-5000": lambda work, dst: _build_chain(dst),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tree", FRESH)
def test_remove_tree(benchmark: Any, work: Path, tree: str, impl: str) -> None:
    fn = IMPLS[impl]
    if fn is None:
        pytest.skip(f"commit {BEFORE} not in this repository's history")
    benchmark.group = f"remove_tree {tree}"
    copies: list[Path] = []

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        dst = work / f"round-{impl}-{len(copies)}"
        if dst.exists():
            remove_tree(dst)
        FRESH[tree](work, dst)
        copies.append(dst)
        return (str(dst),), {}

    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS[tree], iterations=1)
    benchmark.extra_info["removed"] = not any(p.exists() for p in copies)
    for p in copies:
        remove_tree(p)
