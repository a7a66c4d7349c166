"""The ``pysnap`` command in-process, through main(argv): parsing, output,
errors and every snapshot subcommand. du: test_cli_du.py; real processes,
mounts, the demo and terminals: test_cli_process.py."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import re
from pathlib import Path

import pytest
from cli_helpers import Run, chain, jrun

import pysnap
from pysnap import errors
from pysnap.cli import build_parser, human_size, main, rfc3339
from pysnap.cli import du as cli_du

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


# ------------------------------------------------------------- no snapshotter


def test_human_size() -> None:
    # ctr's progress.Bytes: "%02.1f %s", bytes included
    assert [human_size(n) for n in (0, 512, 1023, 1024, 1536, 5 * 2**30)] == [
        "0.0 B",
        "512.0 B",
        "1023.0 B",
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
        ["--map-size", "18446744073709551616", "ls"],
        ["--map-size", "0", "ls"],
        ["--root", "", "ls"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err


@pytest.mark.parametrize("argv", [["bogus"], ["prepare"], ["label", "k", "=v"], ["du"]])
def test_usage_errors_under_json_are_json(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["--json", *argv], [*argv, "--json"]):
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert out == ""
        doc = json.loads(err)["error"]
        assert doc["code"] == "usage" and doc["exit_code"] == 2
        assert doc["message"].startswith("pysnap")
    assert main(["bogus", "--", "--json"]) == 2  # after --, --json is an operand
    assert "usage:" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    for name in ("prepare", "view", "commit", "rm", "ls", "info", "usage", "mounts", "mount",
                 "unmount", "label", "tree", "cleanup", "du", "demo"):  # fmt: skip
        assert name in out
    assert main(["--version"]) == 0
    # one version: the installed metadata's is pysnap.__version__ (pyproject reads it)
    assert capsys.readouterr().out == f"pysnap {importlib.metadata.version('pysnap')}\n"
    assert importlib.metadata.version("pysnap") == pysnap.__version__


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
    code, out, err = run("--json", "du", ".")
    assert (code, out) == (130, "")
    assert json.loads(err) == {
        "error": {"code": "interrupted", "message": "interrupted", "exit_code": 130}
    }


def test_json_error_on_stderr(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(args: object) -> None:
        raise errors.NotFoundError("snapshot 'x'")

    monkeypatch.setattr(cli_du, "cmd_du", fails)
    code, out, err = run("--json", "du", ".")
    assert code == 3
    assert out == ""
    assert json.loads(err)["error"]["code"] == "not_found"
    assert "snapshot 'x'" in json.loads(err)["error"]["message"]


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
    code, out, _ = run("rm", "layer-1", "base")
    assert code == 0
    assert out.splitlines() == ["removed layer-1", "removed base"]
    assert jrun(run, "ls") == []
    orphan = os.path.join(root, "snapshots", "999")
    os.makedirs(os.path.join(orphan, "fs"))
    assert run("cleanup", "--dry-run") == (0, f"would remove {orphan}\n", "")
    assert os.path.isdir(orphan)
    assert jrun(run, "cleanup", "-n") == {"dry_run": True, "removed": [orphan]}
    assert run("cleanup") == (0, f"removed {orphan}\n", "")
    assert not os.path.exists(orphan)
    assert run("cleanup") == (0, "", "")
    assert jrun(run, "cleanup") == {"dry_run": False, "removed": []}


def test_rm_json_lists_what_it_removed(run: Run) -> None:
    chain(run)
    code, out, err = run("--json", "rm", "ro", "nope", "work")
    assert code == 3
    assert json.loads(out) == {"removed": ["ro", "work"]}
    assert json.loads(err)["error"]["code"] == "not_found"


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
    if argv[0] == "rm":  # rm reports what it did remove: here nothing
        assert json.loads(out) == {"removed": []}
    else:
        assert out == ""
    assert json.loads(err)["error"]["code"] == kind


@pytest.mark.parametrize(
    "argv",
    [
        ["ls"],
        ["info", "k"],
        ["usage"],
        ["tree"],
        ["cleanup"],
        ["rm", "k"],
        ["label", "k"],
        ["commit", "n", "k"],
        ["mounts", "/mnt", "k"],
    ],
)
def test_only_prepare_and_view_make_a_root(run: Run, root: str, argv: list[str]) -> None:
    """A mistyped --root is reported (not found), not shown as an empty store of its own."""
    code, out, err = run(*argv)
    assert (code, out) == (3, "")
    assert f"no pysnap root at {root!r}" in err
    assert not os.path.exists(root)
    os.mkdir(root)  # a directory that holds no store is no root either
    code, out, err = run("--json", *argv)
    assert (code, out) == (3, "")
    assert json.loads(err)["error"]["code"] == "not_found"
    assert os.listdir(root) == []
    assert run("view", "v")[0] == 0
    assert run(*argv)[0] in (0, 3)  # now a root: at most the key is missing


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
    assert run("ls")[0] == 3  # --root wins over the variable (and names no root)
    _, out, _ = run("ls", use_root=False)
    assert "e" in out.split()


def test_json_after_subcommand(run: Run) -> None:
    chain(run)
    code, out, _ = run("ls", "--json")
    assert code == 0
    assert len(json.loads(out)) == 4


def test_mount_takes_target_then_key(run: Run, tmp_path: Path) -> None:
    args = build_parser().parse_args(["mount", "/mnt/t", "k"])
    assert (args.target, args.key) == ("/mnt/t", "k")
    target = str(tmp_path / "no such dir")
    run("prepare", "a")
    for command in ("mount", "mounts"):
        code, out, err = run(command, "a", target)  # the order before ctr's
        assert (code, out) == (2, "")
        assert f"did you mean `pysnap {command} '{target}' a`" in err
        code, _, err = run("--json", command, "a", target)
        assert code == 2
        assert json.loads(err)["error"]["code"] == "usage"
        code, _, err = run(command, target, "b")  # neither is a key: the key is not found
        assert code == 3 and "did you mean" not in err
    assert not os.path.exists(target)
