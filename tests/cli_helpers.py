"""What the CLI tests share: main() run in-process on a temporary root, a chain
of snapshots, a tree for du, the command run as a process, mount targets."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from interrupts import pysnap_command
from mountpoints import detach_all_under

from pysnap.cli import main

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "root")


@pytest.fixture
def run(root: str, capsys: pytest.CaptureFixture[str]) -> Run:
    """main(["--root", root, *argv]) -> (exit code, stdout, stderr)."""

    def _run(*argv: str, use_root: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main((["--root", root] if use_root else []) + list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def jrun(run: Run, *argv: str) -> object:
    code, out, err = run("--json", *argv)
    assert code == 0, err
    return json.loads(out)


def chain(run: Run) -> None:
    """base <- layer-1 committed, plus an active 'work' on layer-1 and a view 'ro'."""
    for argv in (
        ("prepare", "base-a", "--label", "stage=one"),
        ("commit", "base", "base-a", "--label", "tier=base"),
        ("prepare", "layer-1-a", "base"),
        ("commit", "layer-1", "layer-1-a"),
        ("prepare", "work", "layer-1", "--label", "owner=me", "--label", "gone="),
        ("view", "ro", "layer-1"),
    ):
        code, _, err = run(*argv)
        assert code == 0, (argv, err)


@pytest.fixture
def du_tree(tmp_path: Path) -> Path:
    """Files of many sizes, a sparse file, hard links, symlinks, empty dirs."""
    top = tmp_path / "tree"
    for d in range(5):
        sub = top / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(20):
            (sub / f"f{f}").write_bytes(b"x" * (f * 997))
    (top / "empty").mkdir()
    with open(top / "sparse", "wb") as fh:
        fh.seek(10 * 2**20)
        fh.write(b"end")
    (top / "big").write_bytes(os.urandom(300_000))
    os.link(top / "big", top / "big-link")
    os.link(top / "big", top / "d0" / "big-link2")
    (top / "sym").symlink_to("big")
    (top / "dangling").symlink_to("nowhere")
    return top


def gnu_du(*args: str) -> int:
    out = subprocess.run(["du", "-s", *args], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def sub(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pysnap *argv`` as a process."""
    return subprocess.run(
        [*pysnap_command(), *argv], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[str]]:
    """Mount points a test adds to; whatever is still mounted there is detached after."""
    made: list[str] = []
    yield made
    for t in reversed(made):
        detach_all_under(t)
