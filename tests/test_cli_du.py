"""``pysnap du``: agreement with GNU du, partial failures, paths that are not UTF-8."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import Run, gnu_du, jrun
from interrupts import pysnap_command
from privileges import unprivileged

from pysnap.cli import human_size, main


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


def test_du_measures_what_it_can_and_reports_the_rest(
    run: Run, du_tree: Path, tmp_path: Path
) -> None:
    """As GNU du: a path that fails is reported, the others are printed, exit non-zero."""
    missing = str(tmp_path / "missing")
    code, out, err = run("du", "-b", str(du_tree), missing, str(du_tree / "d1"))
    assert code == 7
    assert [line.split()[0] for line in out.splitlines()] == [
        "PATH",
        str(du_tree),
        str(du_tree / "d1"),
    ]
    assert out.splitlines()[1].split()[1] == str(gnu_du("--block-size=512", str(du_tree)) * 512)
    assert err.count("\n") == 1 and missing in err
    code, out, err = run("du", missing, missing + "-too")  # every failure is reported
    assert code == 7 and out == ""
    assert err.splitlines() == [
        f"pysnap: du: [Errno 2] No such file or directory: '{p}'"
        for p in (missing, missing + "-too")
    ]
    code, out, err = run("--json", "du", missing, str(du_tree))
    assert code == 7
    assert [d["path"] for d in json.loads(out)] == [str(du_tree)]
    assert json.loads(err)["error"]["code"] == "ENOENT"


def test_du_non_utf8_path_prints_escaped_under_strict_utf8(tmp_path: Path) -> None:
    top = tmp_path / os.fsdecode(b"caf\xe9-\xff")  # Latin-1 bytes: not UTF-8
    top.mkdir()
    (top / "f").write_bytes(b"x" * 5000)
    escaped = str(tmp_path) + "/caf\\xe9-\\xff"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}

    def du(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*pysnap_command(), *argv], capture_output=True, env=env, timeout=60)

    p = du("du", "-b", str(top))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode("utf-8").splitlines()[1].split()[0] == escaped
    p = du("--json", "du", str(top))
    assert p.returncode == 0, p.stderr
    (doc,) = json.loads(p.stdout.decode("utf-8"))  # strict: valid UTF-8
    assert doc["path"] == escaped and doc["inodes"] == 2
    p = du("--json", "du", str(top / os.fsdecode(b"gone-\xff")))
    assert p.returncode == 7
    error = json.loads(p.stderr.decode("utf-8"))["error"]
    assert error["code"] == "ENOENT" and error["message"].endswith(f"'{escaped}/gone-\\xff'")
    p = du("du", str(top / os.fsdecode(b"gone-\xff")))
    assert p.stderr.decode("utf-8").endswith(f"'{escaped}/gone-\\xff'\n")


def test_du_missing_path_exit_7(run: Run, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    code, _, err = run("du", missing)
    assert code == 7
    assert missing in err
    code, _, err = run("--json", "du", missing)
    assert code == 7
    assert json.loads(err)["error"]["code"] == "ENOENT"


def test_python_dash_m(tmp_path: Path, du_tree: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pysnap", "--json", "du", str(du_tree)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["path"] == str(du_tree)


def test_du_reports_an_unreadable_directory_and_prints_the_rest(public_tmp: Path) -> None:
    # GNU du's way: the directory is named, the total of the rest still printed.
    top = public_tmp / "t"
    (top / "closed").mkdir(parents=True)
    (top / "closed" / "f").write_bytes(b"x" * 50_000)
    (top / "open").mkdir()
    (top / "open" / "g").write_bytes(b"y" * 5_000)
    os.chmod(top / "closed", 0o000)

    def du_as_user() -> tuple[int, str, str, int]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--json", "du", "-b", str(top)])
        gnu = subprocess.run(["du", "-s", "--block-size=512", str(top)], capture_output=True)
        return code, out.getvalue(), err.getvalue(), int(gnu.stdout.split(b"\t")[0]) * 512

    code, out, err, gnu_size = unprivileged(du_as_user)  # type: ignore[misc]
    assert code == 7
    assert json.loads(err)["error"]["message"].endswith(f"Permission denied: '{top}/closed'")
    assert [(d["path"], d["size"]) for d in json.loads(out)] == [(str(top), gnu_size)]
