"""The one model of overlay options (pysnap.overlayopts), and what it means for real mounts.

Every escape case is mounted on each of the three overlay paths (mount(2),
the new mount API by fd, relative paths from a helper thread), because each
writes the options to the kernel differently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysnap import Mount, OverlaySnapshotter, mountinfo, overlayopts
from pysnap import mounts as pm
from pysnap.errors import InvalidArgumentError

METHODS = ["legacy", "fd", "relative"]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    t = tmp_path / "mnt"
    t.mkdir()
    yield t
    pm.unmount_all(t, detach=True)


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> Iterator[str]:
    pm.set_overlay_method(request.param)
    yield request.param
    pm.set_overlay_method(None)


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(e.mount_point == real for e in mountinfo.read())


def layer(base: Path, name: str) -> Path:
    """A directory holding one file named after it, so a listing shows which one is mounted."""
    d = base / name
    d.mkdir()
    (d / f"in-{name.encode().hex()}").touch()
    return d


# ---- parse, render, build ----------------------------------------------------------------


def test_parse_reads_both_forms_as_literal_paths() -> None:
    got = overlayopts.parse(
        [
            "workdir=/w\\,x",
            "upperdir=/u\\:x",
            "lowerdir=/a\\\\b:/c\\:d::/data",
            "lowerdir+=/e\\f:g,h",
            "datadir+=/d\\:2",
            "index=off",
            "volatile",
        ]
    )
    assert got == overlayopts.OverlayLayers(
        lowers=("/a\\b", "/c:d", "/e\\f:g,h"),
        datas=("/data", "/d\\:2"),
        upper="/u:x",
        work="/w,x",
        rest=("index=off", "volatile"),
    )
    # render writes every path escaped (upperdir and workdir first, as build does)
    data = overlayopts.render(got)
    assert data.startswith("workdir=/w\\,x,upperdir=/u\\:x,")
    assert data.endswith(",index=off,volatile")
    assert "lowerdir=/a\\\\b:/c\\:d:/e\\\\f\\:g\\,h::/data::/d\\\\\\:2" in data


def test_build_is_what_the_snapshotter_hands_out(tmp_path: Path) -> None:
    with OverlaySnapshotter(tmp_path / "r", sync=False) as sn:
        sn.prepare("a")
        sn.commit("base", "a")
        sn.prepare("b", parent="base")
        sn.commit("mid", "b")
        (m,) = sn.prepare("c", parent="mid")
        snaps = f"{sn.root}/snapshots"
    assert m.options[:3] == (
        f"workdir={snaps}/3/work",
        f"upperdir={snaps}/3/fs",
        f"lowerdir={snaps}/2/fs:{snaps}/1/fs",
    )
    layers = overlayopts.parse(m.options)
    assert overlayopts.render(layers) == ",".join(m.options)  # no escape anywhere


@pytest.mark.parametrize("char", [",", ":", "\\"])
def test_root_that_options_cannot_carry_is_refused(tmp_path: Path, char: str) -> None:
    # "\\" is unescaped by overlayfs in lowerdir=, upperdir= and workdir=: the
    # root /tmp/a\x would mount /tmp/ax/snapshots/...
    root = tmp_path / f"a{char}x"
    with pytest.raises(InvalidArgumentError, match="cannot be used in overlay options"):
        OverlaySnapshotter(root)
    assert not root.exists()


# ---- real mounts of paths with special characters -----------------------------------------


SPECIAL = ["a\\x", "a:b", "a,b", "a\\:b", "a\\\\"]


@pytest.mark.root
@pytest.mark.parametrize("name", SPECIAL)
def test_lowerdir_plus_is_literal(tmp_path: Path, target: Path, method: str, name: str) -> None:
    # decoys: where an unescaping or a split at ':' would lead instead
    for decoy in ("ax", "a", "b", "ab"):
        if not (tmp_path / decoy).exists():
            layer(tmp_path, decoy)
    special, other = layer(tmp_path, name), layer(tmp_path, "other")
    Mount("overlay", "overlay", (f"lowerdir+={special}", f"lowerdir+={other}")).mount(target)
    assert sorted(os.listdir(target)) == sorted([*os.listdir(special), *os.listdir(other)])


@pytest.mark.root
@pytest.mark.parametrize("name", SPECIAL)
def test_escaped_paths_mount_those_directories(
    tmp_path: Path, target: Path, method: str, name: str
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for decoy in ("ax", "a", "b", "ab"):
        layer(base, decoy)
    lower, other = layer(base, name + "-lower"), layer(base, "other")
    upper, work = base / (name + "-upper"), base / (name + "-work")
    upper.mkdir()
    work.mkdir()
    e = overlayopts.escape
    Mount(
        "overlay",
        "overlay",
        (
            f"workdir={e(str(work))}",
            f"upperdir={e(str(upper))}",
            f"lowerdir={e(str(lower))}:{other}",
        ),
    ).mount(target)
    assert sorted(os.listdir(target)) == sorted([*os.listdir(lower), *os.listdir(other)])
    (target / "written").write_text("x")
    assert os.listdir(upper) == ["written"]  # the write landed in this upper, no other
    assert os.listdir(work) == ["work"]


# ---- overlapping layers (issue 10 item 10) -------------------------------------------------


def _overlap_cases(base: Path) -> list[tuple[list[str], str]]:
    a, b, up, wk = base / "a", base / "b", base / "up", base / "wk"
    (a / "sub").mkdir(parents=True)
    (up / "in").mkdir(parents=True)
    for d in (b, wk):
        d.mkdir()
    uw = [f"upperdir={up}", f"workdir={wk}"]
    return [
        ([f"lowerdir={a}:{b}:{a}"], f"lowerdir #1 '{a}' and lowerdir #3 '{a}' are one directory"),
        ([f"lowerdir={a}:{b}:{a}/"], "are one directory"),
        ([f"lowerdir={a}:{a}/sub"], f"lowerdir #2 '{a}/sub' is inside lowerdir #1 '{a}'"),
        ([f"lowerdir={a}/sub:{b}:{base}/./a"], "lowerdir #1"),
        ([f"lowerdir={up}/in:{b}", *uw], f"lowerdir #1 '{up}/in' is inside upperdir '{up}'"),
        ([f"lowerdir={wk}:{b}", *uw], f"lowerdir #1 '{wk}' and workdir '{wk}' are one directory"),
        ([f"lowerdir={a}:{b}:{base}"], f"lowerdir #1 '{a}' is inside lowerdir #3 '{base}'"),
        ([f"lowerdir+={a}", f"datadir+={a}/sub"], f"datadir #1 '{a}/sub' is inside lowerdir #1"),
    ]


@pytest.mark.root
@pytest.mark.parametrize("case", range(8))
def test_overlapping_layers_are_named(tmp_path: Path, target: Path, case: int) -> None:
    options, message = _overlap_cases(tmp_path)[case]
    with pytest.raises(InvalidArgumentError, match="overlay layers overlap") as exc:
        pm.mount_all([Mount("overlay", "overlay", (*options, "index=off"))], target)
    assert message in str(exc.value)
    assert not is_mounted(target)


@pytest.mark.root
def test_overlap_behind_a_symlink_is_named(tmp_path: Path, target: Path, method: str) -> None:
    # the same directory under two names
    a, b = layer(tmp_path, "a"), layer(tmp_path, "b")
    alias = tmp_path / "alias"
    alias.symlink_to(a)
    with pytest.raises(InvalidArgumentError, match=f"'{alias}' are one directory"):
        pm.mount_all([Mount("overlay", "overlay", (f"lowerdir={a}:{b}:{alias}",))], target)
    assert not is_mounted(target)


@pytest.mark.root
def test_layers_the_kernel_accepts_mount(tmp_path: Path, target: Path) -> None:
    # "/x/a" and "/x/ab" share a prefix, but neither is inside the other;
    # an upper (and its workdir) inside a lower is allowed by overlayfs
    a, ab = layer(tmp_path, "a"), layer(tmp_path, "ab")
    (a / "up").mkdir()
    (ab / "wk").mkdir()
    options = (f"lowerdir={a}:{ab}", f"upperdir={a}/up", f"workdir={ab}/wk", "index=off")
    Mount("overlay", "overlay", options).mount(target)
    assert sorted(os.listdir(target)) == sorted({*os.listdir(a), *os.listdir(ab)})
