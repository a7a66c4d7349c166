"""The ``pysnap`` command as a process: the main flows, mounts as root, the demo
(also interrupted), and progress and Ctrl-C under a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, sub
from interrupts import interrupt_at, pysnap_command, read_until, spawn_in_pty, wait_exit
from mountpoints import is_mounted
from served import ServedSnapshotter

from pysnap import Kind, mountinfo
from pysnap.cli import main

# --------------------------------------------------------- real subprocesses


def test_subprocess_main_flow(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    env = {**os.environ, "PYSNAP_ROOT": root}
    assert sub("prepare", "a", "--label", "k=v", env=env).returncode == 0
    assert sub("commit", "layer", "a", env=env).returncode == 0
    assert sub("view", "v", "layer", env=env).returncode == 0
    p = sub("--json", "ls", "kind==view", env=env)
    assert p.returncode == 0, p.stderr
    assert [(d["name"], d["parent"]) for d in json.loads(p.stdout)] == [("v", "layer")]
    p = sub("--json", "usage", env=env)
    assert {d["key"] for d in json.loads(p.stdout)} == {"layer", "v"}
    p = sub("info", "missing", env=env)
    assert p.returncode == 3
    assert "missing" in p.stderr and "Traceback" not in p.stderr
    p = sub("prepare", "v", env=env)
    assert p.returncode == 4
    p = sub("rm", "layer", env=env)
    assert p.returncode == 5
    p = sub("--json", "ls", "name==", env=env)
    assert p.returncode == 6 and json.loads(p.stderr)["error"]["code"] == "invalid_argument"
    assert sub("--root", str(tmp_path / "other"), "prepare", "o", env=env).returncode == 0
    p = sub("--root", str(tmp_path / "other"), "ls", env=env)  # --root wins
    assert p.returncode == 0 and p.stdout.split() == ["KEY", "PARENT", "KIND", "o", "active"]
    p = sub("rm", "v", "layer", env=env)
    assert p.returncode == 0
    p = sub("frobnicate", env=env)
    assert p.returncode == 2
    p = sub("du", str(tmp_path / "nope"), env=env)
    assert p.returncode == 7


def test_closed_standard_streams(tmp_path: Path) -> None:
    # Python gives a closed descriptor's stream as None: no traceback, the right code.
    env = {**os.environ, "PYSNAP_ROOT": str(tmp_path / "root")}
    assert sub("prepare", "a", env=env).returncode == 0

    def closed(fd: int, *argv: str) -> subprocess.CompletedProcess[str]:
        streams: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        streams[("stdin", "stdout", "stderr")[fd]] = subprocess.DEVNULL
        return subprocess.run(
            [*pysnap_command(), *argv],
            **streams,
            text=True,
            env=env,
            timeout=60,
            preexec_fn=lambda: os.close(fd),
        )

    assert closed(2, "info", "nope").returncode == 3  # the error is lost, not its code
    assert closed(2, "bogus").returncode == 2
    for argv in (["ls"], ["--json", "ls"], ["diff", "a", "-"]):
        p = closed(1, *argv)
        assert p.returncode == 7 and "Bad file descriptor: '<stdout>'" in p.stderr, argv
    p = closed(0, "apply", "a", "-")
    assert p.returncode == 7 and "Bad file descriptor: '<stdin>'" in p.stderr
    assert "Traceback" not in p.stderr


# ------------------------------------------------------- mounts, as root


@pytest.mark.root
def test_mount_and_unmount(run: Run, tmp_path: Path, targets: list[str]) -> None:
    t = str(tmp_path / "target")
    os.mkdir(t)
    targets.append(t)
    assert run("prepare", "a")[0] == 0
    code, _, err = run("mount", t, "a")
    assert code == 0, err
    assert is_mounted(t)
    Path(t, "hello").write_text("layer a\n")
    assert run("unmount", t)[0] == 0
    assert not is_mounted(t)
    assert run("commit", "la", "a")[0] == 0
    assert run("prepare", "b", "la")[0] == 0
    assert run("mount", t, "b")[0] == 0
    assert Path(t, "hello").read_text() == "layer a\n"
    Path(t, "hello").unlink()
    Path(t, "new").write_text("b\n")
    assert run("unmount", t)[0] == 0
    assert run("commit", "lb", "b")[0] == 0
    assert run("view", "v", "lb")[0] == 0
    assert run("mount", t, "v")[0] == 0
    assert sorted(os.listdir(t)) == ["new"]
    with pytest.raises(OSError):
        Path(t, "x").write_text("read-only")
    assert run("umount", t)[0] == 0
    code, _, err = run("unmount", t)  # not mounted any more
    assert code == 7
    assert t in err


@pytest.mark.root
def test_subprocess_mount_unmount(tmp_path: Path, targets: list[str]) -> None:
    env = {**os.environ, "PYSNAP_ROOT": str(tmp_path / "root")}
    t = str(tmp_path / "t")
    os.mkdir(t)
    targets.append(t)
    assert sub("prepare", "a", env=env).returncode == 0
    p = sub("mount", t, "a", env=env)
    assert p.returncode == 0, p.stderr
    assert is_mounted(t)
    p = sub("unmount", t, env=env)
    assert p.returncode == 0, p.stderr
    assert not is_mounted(t)


@pytest.mark.root
def test_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYSNAP_ROOT": str(tmp_path / "configured")}
    p = sub("demo", env=env)
    assert p.returncode == 0, p.stderr
    assert "layer-3" in p.stdout and "nothing left behind" in p.stdout
    assert list(tmp.iterdir()) == []  # no folder
    assert not (tmp_path / "configured").exists()  # never the configured store
    assert mountinfo.mounts_under(tmp) == []  # no mount
    p = sub("--json", "demo", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [layer["name"] for layer in doc["layers"]] == ["layer-1", "layer-2", "layer-3"]
    assert doc["removed"] is True
    assert list(tmp.iterdir()) == []


@pytest.mark.root
@pytest.mark.parametrize("parent", [False, True], ids=["bind", "overlay"])
def test_commit_and_rm_refuse_a_mounted_snapshot(
    tmp_path: Path, targets: list[str], capsys: pytest.CaptureFixture[str], parent: bool
) -> None:
    # Spaces in the paths: mountinfo shows them octal-escaped (\\040).
    root = str(tmp_path / "a root")
    t = str(tmp_path / "the target")
    os.mkdir(t)
    targets.append(t)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--root", root, *argv])
        return (code, *capsys.readouterr())

    base = ""
    if parent:
        assert run("prepare", "b") == (0, "", "")
        assert run("commit", "base", "b") == (0, "", "")
        base = "base"
    assert run("prepare", "a", base)[0] == 0
    assert run("mount", t, "a")[0] == 0
    for argv in (["commit", "la", "a"], ["rm", "a"]):
        code, out, err = run(*argv)
        assert (code, out) == (5, "")
        assert f"it is mounted at {t}" in err and "--force" in err
        code, out, _ = run("--json", "info", "a")
        assert json.loads(out)["kind"] == "active"  # nothing changed
    if parent:
        code, out, err = run("rm", "base")  # a committed layer: refused for its child
        assert code == 5
    assert run("unmount", t)[0] == 0
    assert run("commit", "la", "a") == (0, "", "")
    assert run("view", "v", "la")[0] == 0
    assert run("mount", t, "v")[0] == 0
    # A view owns no layer of its mount (it mounts la's), so it goes; la then has
    # no child, but its layer is still mounted.
    assert run("rm", "v") == (0, "removed v\n", "")
    code, out, err = run("rm", "la")
    assert code == 5 and f"it is mounted at {t}" in err
    assert run("unmount", t)[0] == 0
    assert run("prepare", "c", "la")[0] == 0
    assert run("mount", t, "c")[0] == 0
    assert run("commit", "--force", "lc", "c") == (0, "", "")
    assert run("rm", "lc")[0] == 5
    assert run("rm", "-f", "lc") == (0, "removed lc\n", "")
    assert run("unmount", t)[0] == 0
    assert run("rm", "la") == (0, "removed la\n", "")


@pytest.mark.root
@pytest.mark.parametrize("parent", [False, True], ids=["bind", "overlay"])
def test_remote_commit_and_rm_refuse_a_mounted_active_snapshot(
    tmp_path: Path, targets: list[str], capsys: pytest.CaptureFixture[str], parent: bool
) -> None:
    # The server has no upperdir label (serve's default): the check reads mounts().
    t = str(tmp_path / "target")
    os.mkdir(t)
    targets.append(t)
    with ServedSnapshotter(tmp_path / "root", sync=False) as served:

        def run(*argv: str) -> tuple[int, str, str]:
            code = main(["--address", served.server.address, *argv])
            return (code, *capsys.readouterr())

        base = ""
        if parent:
            served.prepare("b")
            served.commit("base", "b")
            base = "base"
        served.prepare("a", base)
        assert run("mount", t, "a")[0] == 0
        for argv in (["commit", "la", "a"], ["rm", "a"]):
            code, out, err = run(*argv)
            assert (code, out) == (5, ""), err
            assert f"it is mounted at {t}" in err and "--force" in err
            assert served.stat("a").kind == Kind.ACTIVE  # nothing changed
        assert run("unmount", t)[0] == 0
        assert run("commit", "la", "a") == (0, "", "")
        served.prepare("c", "la")
        assert run("mount", t, "c")[0] == 0
        assert run("rm", "--force", "c") == (0, "removed c\n", "")
        assert run("unmount", t)[0] == 0


# Where a Ctrl-C can stop the demo: making its root; making a mount point; a
# layer mounted and written; a commit; the view mounted and read; its removal.
DEMO_STOPS = {
    "root": [("c_return", "mkdir")],
    "mount point": [("call", "mounted"), ("c_return", "mkdir")],
    "writing": [("call", "_apply")],
    "commit": [("call", "OverlaySnapshotter.commit")],
    "second layer": [("call", "_apply"), ("call", "_apply")],
    "view": [("call", "_contents")],
    "remove": [("call", "OverlaySnapshotter.remove")],
}


@pytest.mark.root
@pytest.mark.parametrize("stop", list(DEMO_STOPS))
def test_demo_interrupted_leaves_nothing_behind(tmp_path: Path, stop: str) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    got = interrupt_at(["demo"], DEMO_STOPS[stop], env=env)
    assert got.reached, got.stderr
    assert got.returncode == 130, got.stderr
    assert "Traceback" not in got.stderr and "interrupted" in got.stderr
    assert mountinfo.mounts_under(tmp) == []
    assert list(tmp.iterdir()) == []


# ------------------------------------------- progress and Ctrl-C under a pty


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 files: past the progress step of both du (4,096) and usage (16,384)."""
    top = tmp_path_factory.mktemp("big")
    for d in range(BIG_DIRS):
        sub = top / f"d{d:02}"
        sub.mkdir()
        for f in range(1000):
            os.close(os.open(sub / f"f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
    return top


BIG_DIRS = 20


PROGRESS = re.compile(rb"du [^:\r\n]*: [\d,]+ files, [\d.]+ \w+")


def test_progress_on_a_terminal(big_tree: Path) -> None:
    pid, fd = spawn_in_pty([*pysnap_command(), "--json", "du", str(big_tree)])
    buf = bytearray()
    code = wait_exit(pid, fd, buf)
    assert code == 0, bytes(buf)
    assert PROGRESS.search(buf), bytes(buf)
    # the display is wiped before the data: the JSON document parses on its own
    text = bytes(buf).decode()
    doc = json.loads(text[text.rindex("\x1b[K") + 3 :])
    assert doc[0]["inodes"] == BIG_DIRS * 1000 + BIG_DIRS + 1


def test_progress_fits_the_terminal(big_tree: Path) -> None:
    long_path = str(big_tree) + "/" + "/".join(["."] * 40)  # the same tree, a long name
    pid, fd = spawn_in_pty([*pysnap_command(), "du", long_path], columns=40)
    buf = bytearray()
    assert wait_exit(pid, fd, buf) == 0, bytes(buf)
    lines = [p for p in bytes(buf).split(b"\r\x1b[K") if b" files, " in p]
    assert lines, bytes(buf)
    for line in lines:
        assert len(line.decode()) <= 39, line  # the last column stays free: no wrap
        assert re.search(rb": [\d,]+ files, [\d.]+ \w+$", line), line


def test_no_progress_on_a_dumb_terminal(big_tree: Path) -> None:
    env = {**os.environ, "TERM": "dumb"}
    pid, fd = spawn_in_pty([*pysnap_command(), "du", str(big_tree)], env=env)
    buf = bytearray()
    assert wait_exit(pid, fd, buf) == 0, bytes(buf)
    assert b"\x1b" not in buf and b" files, " not in buf
    assert str(big_tree).encode() in buf


def test_no_progress_without_terminal(big_tree: Path) -> None:
    p = sub("du", str(big_tree))
    assert p.returncode == 0
    assert p.stderr == ""


def test_ctrl_c_stops_du(big_tree: Path) -> None:
    # Many walks of the tree in one command, so the command is still walking
    # long after the first progress line; Ctrl-C is typed once that line is read.
    argv = [*pysnap_command(), "du", *[str(big_tree)] * 200]
    pid, fd = spawn_in_pty(argv)
    buf = bytearray()
    assert read_until(fd, PROGRESS, buf), bytes(buf)
    os.write(fd, b"\x03")  # the terminal turns ^C into SIGINT for the foreground group
    code = wait_exit(pid, fd, buf)
    assert code == 130, bytes(buf)
    assert b"Traceback" not in buf
    assert b"interrupted" in buf
    assert buf.count(str(big_tree).encode() + b" ") < 200  # stopped before the end


def test_ctrl_c_by_signal(big_tree: Path) -> None:
    argv = [*pysnap_command(), "du", *[str(big_tree)] * 200]
    pid, fd = spawn_in_pty(argv)
    buf = bytearray()
    assert read_until(fd, PROGRESS, buf), bytes(buf)
    os.kill(pid, signal.SIGINT)
    assert wait_exit(pid, fd, buf) == 130
    assert b"Traceback" not in buf


def test_usage_progress_on_a_terminal(tmp_path: Path, big_tree: Path) -> None:
    """usage of an active snapshot walks its upper dir now, with progress."""
    root = tmp_path / "root"
    assert main(["--root", str(root), "prepare", "big"]) == 0
    from pysnap.overlay import OverlaySnapshotter

    with OverlaySnapshotter(str(root)) as sn:
        upper = Path(sn.mounts("big")[0].source)  # no parent: a bind of the upper dir
    # Lend the big tree to the upper dir (a rename each way, not 20,000 creates).
    subdirs = sorted(big_tree.iterdir())
    for d in subdirs:
        d.rename(upper / d.name)
    try:
        argv = [*pysnap_command(), "--root", str(root), "--json", "usage", "big"]
        pid, fd = spawn_in_pty(argv)
        buf = bytearray()
        assert wait_exit(pid, fd, buf) == 0, bytes(buf)
    finally:
        for d in subdirs:
            (upper / d.name).rename(d)
    assert re.search(rb"usage big: [\d,]+ files", buf), bytes(buf)
    text = bytes(buf).decode()
    doc = json.loads(text[text.rindex("\x1b[K") + 3 :])
    assert doc[0]["key"] == "big"
    assert doc[0]["inodes"] == BIG_DIRS * 1000 + BIG_DIRS + 1
