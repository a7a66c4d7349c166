"""The ``pysnap`` command: every subcommand through main(argv), the main flows
through a real ``pysnap`` process, and progress and Ctrl-C under a real
pseudo-terminal."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysnap import errors
from pysnap.cli import build_parser, human_size, main, rfc3339
from pysnap.cli import du as cli_du

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

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


def pysnap_command() -> list[str]:
    """The installed console script, or the module when it is not on disk."""
    script = Path(sys.executable).with_name("pysnap")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pysnap"]


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


# ------------------------------------------------------------- no snapshotter


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 512, 1023, 1024, 1536, 5 * 2**30)] == [
        "0 B",
        "512 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 GiB",
    ]


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_714_564_800_123_456_789) == "2024-05-01T12:00:00.123456789Z"


def test_root_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSNAP_ROOT", raising=False)
    assert build_parser().parse_args(["ls"]).root == "/var/lib/pysnap"
    monkeypatch.setenv("PYSNAP_ROOT", "/srv/snaps")
    assert build_parser().parse_args(["ls"]).root == "/srv/snaps"
    assert build_parser().parse_args(["--root", "/x", "ls"]).root == "/x"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["prepare"],
        ["commit", "only-name"],
        ["rm"],
        ["mounts", "/mnt"],
        ["label", "k", "novalue"],
        ["label", "k", "=v"],
        ["prepare", "k", "--label", "x"],
        ["du"],
        ["usage", "--no-such-option"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    for name in ("prepare", "view", "commit", "rm", "ls", "info", "usage", "mounts", "mount",
                 "unmount", "label", "tree", "cleanup", "du", "demo"):  # fmt: skip
        assert name in out
    assert main(["--version"]) == 0
    assert "pysnap" in capsys.readouterr().out


def test_unexpected_error_exit_1(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_du, "cmd_du", boom)
    code, _, err = run("du", ".")
    assert code == 1
    assert "RuntimeError: a bug" in err


def test_keyboard_interrupt_exit_130(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_du, "cmd_du", interrupted)
    code, _, err = run("du", ".")
    assert code == 130
    assert "Traceback" not in err


def test_json_error_on_stderr(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(args: object) -> None:
        raise errors.NotFoundError("snapshot 'x'")

    monkeypatch.setattr(cli_du, "cmd_du", fails)
    code, out, err = run("--json", "du", ".")
    assert code == 3
    assert out == ""
    assert json.loads(err)["error"]["code"] == "not_found"
    assert "snapshot 'x'" in json.loads(err)["error"]["message"]


# ------------------------------------------------------------------------ du


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


def test_du_agrees_with_gnu_du(run: Run, du_tree: Path) -> None:
    docs = jrun(run, "du", str(du_tree))
    assert docs == [
        {
            "path": str(du_tree),
            "size": gnu_du("--block-size=512", str(du_tree)) * 512,
            "inodes": gnu_du("--inodes", str(du_tree)),
        }
    ]


def test_du_table(run: Run, du_tree: Path) -> None:
    code, out, err = run("du", "-b", str(du_tree), str(du_tree / "d1"))
    assert code == 0
    assert err == ""  # no terminal, no progress
    lines = out.splitlines()
    assert lines[0].split() == ["PATH", "SIZE", "INODES"]
    size = gnu_du("--block-size=512", str(du_tree)) * 512
    assert lines[1].split()[:2] == [str(du_tree), str(size)]
    assert lines[2].split()[0] == str(du_tree / "d1")
    code, out, _ = run("du", str(du_tree))
    assert human_size(size) in out


def test_du_missing_path_exit_7(run: Run, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    code, _, err = run("du", missing)
    assert code == 7
    assert missing in err
    code, _, err = run("--json", "du", missing)
    assert code == 7
    assert json.loads(err)["error"]["code"] == "ENOENT"


# ------------------------------------------------------------------ snapshots


def test_prepare_commit_ls_info(run: Run) -> None:
    chain(run)
    code, out, err = run("ls")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["KEY", "PARENT", "KIND"]
    assert rows[1:] == [
        ["base", "committed"],
        ["layer-1", "base", "committed"],
        ["ro", "layer-1", "view"],
        ["work", "layer-1", "active"],
    ]
    snaps = jrun(run, "ls")
    assert isinstance(snaps, list)
    by = {s["name"]: s for s in snaps}
    assert set(by) == {"base", "layer-1", "ro", "work"}
    assert by["base"]["labels"] == {"tier": "base"}  # commit labels only
    assert by["work"]["labels"] == {"owner": "me"}  # empty values dropped
    assert by["work"]["kind"] == "active" and by["work"]["parent"] == "layer-1"
    for s in snaps:
        assert set(s) == {"name", "kind", "parent", "labels", "created", "updated"}
        assert RFC3339.match(s["created"]) and RFC3339.match(s["updated"])

    code, out, _ = run("info", "work")
    assert code == 0
    assert "work" in out and "active" in out and "layer-1" in out and "owner=me" in out
    info = jrun(run, "info", "layer-1")
    assert info == by["layer-1"]


def test_ls_filters(run: Run) -> None:
    chain(run)

    def ls(*filters: str) -> list[str]:
        docs = jrun(run, "ls", *filters)
        assert isinstance(docs, list)
        return [d["name"] for d in docs]

    assert ls("kind==committed") == ["base", "layer-1"]
    assert ls("parent==layer-1") == ["ro", "work"]
    assert ls("kind==view", "labels.tier") == ["base", "ro"]
    assert ls("labels.owner==me,kind==active") == ["work"]
    assert ls("name~=^l") == ["layer-1"]
    code, _, err = run("ls", "name==")
    assert code == 6
    assert "name==" in err


def test_prepare_and_commit_json(run: Run) -> None:
    doc = jrun(run, "prepare", "a", "--label", "x=1", "--target", "/mnt/t")
    assert isinstance(doc, dict)
    assert doc["name"] == "a" and doc["kind"] == "active" and doc["labels"] == {"x": "1"}
    assert doc["mounts"][0]["target"] == "/mnt/t"
    assert doc["mounts"][0]["type"] == "bind"
    doc = jrun(run, "commit", "c", "a")
    assert isinstance(doc, dict)
    assert doc["name"] == "c" and doc["kind"] == "committed" and doc["labels"] == {}
    doc = jrun(run, "view", "v", "c")
    assert isinstance(doc, dict)
    assert doc["kind"] == "view" and doc["parent"] == "c"


def test_prepare_prints_mounts_for_target(run: Run) -> None:
    code, out, _ = run("prepare", "a")
    assert code == 0 and out == ""  # silent without --target, as ctr
    run("commit", "c", "a")
    code, out, _ = run("prepare", "b", "c", "--target", "/mnt/x y")
    assert code == 0
    assert out.startswith("mount -t overlay overlay '/mnt/x y' -o ")


def test_mounts_prints_shell_commands(run: Run, root: str) -> None:
    chain(run)
    code, out, _ = run("mounts", "/mnt/t", "work")
    assert code == 0
    words = out.split()
    assert words[:5] == ["mount", "-t", "overlay", "overlay", "/mnt/t"]
    opts = words[6].split(",")
    assert [o.split("=")[0] for o in opts[:3]] == ["workdir", "upperdir", "lowerdir"]
    assert opts[2].count(":") == 1  # layer-1 and base
    code, out, _ = run("mounts", "/mnt/t", "ro")  # a view of a 2-layer chain
    assert out.split()[:4] == ["mount", "-t", "overlay", "overlay"]
    docs = jrun(run, "mounts", "/mnt/t", "work")
    assert isinstance(docs, list)
    assert docs[0]["type"] == "overlay" and docs[0]["target"] == "/mnt/t"
    assert docs[0]["options"] == opts
    run("prepare", "solo")
    code, out, _ = run("mounts", "/mnt/t", "solo")
    assert out.split()[:3] == ["mount", "-t", "bind"]
    assert out.split()[3].startswith(root)


def test_usage(run: Run) -> None:
    chain(run)
    code, out, err = run("usage")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["KEY", "SIZE", "INODES"]
    assert [r[0] for r in rows[1:]] == ["base", "layer-1", "ro", "work"]
    docs = jrun(run, "usage", "work", "base")
    assert isinstance(docs, list)
    assert [d["key"] for d in docs] == ["work", "base"]
    for d in docs:
        assert set(d) == {"key", "size", "inodes"}
        assert d["inodes"] >= 1 and d["size"] >= 0
    code, out, _ = run("usage", "-b", "ro")
    assert out.splitlines()[1].split() == ["ro", "0", "0"]  # a view owns nothing
    code, out, _ = run("usage", "base")
    assert re.search(r"\d B|KiB", out)


def test_label(run: Run) -> None:
    chain(run)
    code, out, _ = run("label", "work", "a=1", "b=2")
    assert code == 0
    assert out.splitlines() == ["a=1", "b=2", "owner=me"]
    code, out, _ = run("label", "work", "owner=", "a=3")
    assert out.splitlines() == ["a=3", "b=2"]
    code, out, _ = run("label", "work")
    assert out.splitlines() == ["a=3", "b=2"]
    doc = jrun(run, "label", "work", "dotted.key=v")
    assert isinstance(doc, dict)
    assert doc["labels"] == {"a": "3", "b": "2", "dotted.key": "v"}
    code, _, _ = run("label", "nope", "a=1")
    assert code == 3
    code, out, _ = run("label", "work", "b=5", "b=")  # the last value wins, as in ctr
    assert out.splitlines() == ["a=3", "dotted.key=v"]
    run("prepare", "rep", "--label", "r=1", "--label", "r=")
    assert jrun(run, "info", "rep")["labels"] == {}  # type: ignore[index]


def test_tree(run: Run) -> None:
    chain(run)
    run("prepare", "lonely")
    code, out, _ = run("tree")
    assert code == 0
    assert out.splitlines() == [
        "base (committed)",
        "  \\_ layer-1 (committed)",
        "    \\_ ro (view)",
        "    \\_ work (active)",
        "lonely (active)",
    ]
    forest = jrun(run, "tree")
    assert isinstance(forest, list)
    assert [n["name"] for n in forest] == ["base", "lonely"]
    assert [c["name"] for c in forest[0]["children"][0]["children"]] == ["ro", "work"]


def test_rm_and_cleanup(run: Run, root: str) -> None:
    chain(run)
    code, _, err = run("rm", "layer-1")
    assert code == 5  # has children
    assert "layer-1" in err
    code, _, err = run("rm", "nope", "ro", "work")  # one failure, the rest still go
    assert code == 3
    assert "nope" in err
    code, _, err = run("rm", "gone-1", "gone-2")  # every failure is reported
    assert code == 3
    assert "gone-1" in err and "gone-2" in err
    code, _, _ = run("rm", "layer-1", "base")
    assert code == 0
    assert jrun(run, "ls") == []
    os.makedirs(os.path.join(root, "snapshots", "999", "fs"))
    assert run("cleanup")[0] == 0
    assert not os.path.exists(os.path.join(root, "snapshots", "999"))


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["info", "missing"], 3, "not_found"),
        (["prepare", "x", "missing-parent"], 3, "not_found"),
        (["commit", "n", "missing"], 3, "not_found"),
        (["prepare", "work"], 4, "already_exists"),
        (["view", "base"], 4, "already_exists"),
        (["commit", "base", "work"], 4, "already_exists"),
        (["rm", "base"], 5, "failed_precondition"),
        (["mounts", "/mnt", "base"], 5, "failed_precondition"),
        (["commit", "n", "ro"], 5, "failed_precondition"),
        (["prepare", "x", "work"], 6, "invalid_argument"),
        (["prepare", ""], 6, "invalid_argument"),
        (["ls", "labels."], 6, "invalid_argument"),
        (["label", "work", "p"], 2, None),
    ],
)
def test_exit_code_per_error_kind(run: Run, argv: list[str], code: int, kind: str | None) -> None:
    chain(run)
    got, out, err = run(*argv)
    assert got == code, err
    if kind is None:
        return
    assert err.startswith(f"pysnap: {argv[0]}: ")
    got, out, err = run("--json", *argv)
    assert got == code
    assert out == ""
    assert json.loads(err)["error"]["code"] == kind


def test_oserror_exit_7(run: Run, tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    code, _, err = run("--root", str(afile / "sub"), "ls", use_root=False)
    assert code == 7
    assert str(afile) in err
    code, _, err = run("--json", "--root", str(afile / "sub"), "ls", use_root=False)
    assert json.loads(err)["error"]["code"] == errno.errorcode[errno.ENOTDIR]


def test_root_from_environment(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root = tmp_path / "from-env"
    monkeypatch.setenv("PYSNAP_ROOT", str(env_root))
    assert run("prepare", "e", use_root=False)[0] == 0
    assert env_root.is_dir()
    assert [d["name"] for d in jrun(run, "ls")] == []  # --root wins over the variable
    _, out, _ = run("ls", use_root=False)
    assert "e" in out.split()


def test_json_after_subcommand(run: Run) -> None:
    chain(run)
    code, out, _ = run("ls", "--json")
    assert code == 0
    assert len(json.loads(out)) == 4


# --------------------------------------------------------- real subprocesses


def sub(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pysnap_command(), *argv], capture_output=True, text=True, env=env, timeout=60
    )


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
    p = sub("--root", str(tmp_path / "other"), "ls", env=env)  # --root wins
    assert p.returncode == 0 and p.stdout.split() == ["KEY", "PARENT", "KIND"]
    p = sub("rm", "v", "layer", env=env)
    assert p.returncode == 0
    p = sub("frobnicate", env=env)
    assert p.returncode == 2
    p = sub("du", str(tmp_path / "nope"), env=env)
    assert p.returncode == 7


def test_python_dash_m(tmp_path: Path, du_tree: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pysnap", "--json", "du", str(du_tree)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["path"] == str(du_tree)


# ------------------------------------------------------- mounts, as root


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for t in reversed(made):
        while _mounted(t):
            subprocess.run(["umount", "-l", t], check=False)


@pytest.mark.root
def test_mount_and_unmount(run: Run, tmp_path: Path, targets: list[str]) -> None:
    t = str(tmp_path / "target")
    os.mkdir(t)
    targets.append(t)
    assert run("prepare", "a")[0] == 0
    code, _, err = run("mount", "a", t)
    assert code == 0, err
    assert _mounted(t)
    Path(t, "hello").write_text("layer a\n")
    assert run("unmount", t)[0] == 0
    assert not _mounted(t)
    assert run("commit", "la", "a")[0] == 0
    assert run("prepare", "b", "la")[0] == 0
    assert run("mount", "b", t)[0] == 0
    assert Path(t, "hello").read_text() == "layer a\n"
    Path(t, "hello").unlink()
    Path(t, "new").write_text("b\n")
    assert run("unmount", t)[0] == 0
    assert run("commit", "lb", "b")[0] == 0
    assert run("view", "v", "lb")[0] == 0
    assert run("mount", "v", t)[0] == 0
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
    p = sub("mount", "a", t, env=env)
    assert p.returncode == 0, p.stderr
    assert _mounted(t)
    p = sub("unmount", t, env=env)
    assert p.returncode == 0, p.stderr
    assert not _mounted(t)


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
    with open("/proc/self/mountinfo") as f:
        assert str(tmp) not in f.read()  # no mount
    p = sub("--json", "demo", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [layer["name"] for layer in doc["layers"]] == ["layer-1", "layer-2", "layer-3"]
    assert doc["removed"] is True
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


def spawn_in_pty(argv: list[str]) -> tuple[int, int]:
    """Run argv with a new pseudo-terminal as its controlling terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid, fd


def read_until(fd: int, pattern: re.Pattern[bytes], buf: bytearray) -> re.Match[bytes] | None:
    """Read the pty into buf until pattern matches or the child closes it.

    The select timeout only keeps a broken child from hanging the suite."""
    while not (m := pattern.search(buf)):
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            return None
        try:
            chunk = os.read(fd, 65536)
        except OSError as e:  # EIO: the child closed the terminal
            if e.errno == errno.EIO:
                return None
            raise
        if not chunk:
            return None
        buf += chunk
    return m


def wait_exit(pid: int, fd: int, buf: bytearray) -> int:
    read_until(fd, re.compile(rb"(?!)"), buf)  # drain to EOF
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


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
