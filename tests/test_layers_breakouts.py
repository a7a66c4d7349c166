"""containerd's TestBreakouts (archive/tar_test.go, 33 cases in 1.6, 34 in 2.x), recreated.

Each case applies a hostile layer into a snapshot's upper directory, with the
upper prepared as containerd's test prepares its root, and checks what the
upper holds, that nothing was written outside it, or that the layer is
refused. Where overlay whiteouts differ from containerd's naive removal, the
whiteout is a character device 0/0 in the upper (hidden in a mount).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from layertar import dir_, file, link, symlink, tar

import pysnap
from pysnap.archive import implied
from pysnap.errors import InvalidArgumentError
from pysnap.overlay import UPPERDIR_LABEL

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteout devices need root")

Check = Callable[[Path], None]


def resolve(root: Path, name: str) -> Path:
    """name resolved with symlinks inside root (containerd's fs.RootPath), for the checks."""
    cur = root
    parts = [p for p in name.split("/") if p]
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / p
        if nxt.is_symlink():
            hops += 1
            assert hops < 40
            target = os.readlink(nxt)
            parts = [q for q in target.split("/") if q] + parts
            cur = root if target.startswith("/") else cur
            continue
        cur = nxt
    return cur


def unbroken(root: Path) -> None:
    assert (root / "etc/unbroken").read_bytes() == b"unbroken"


def same_file(a: str, b: str) -> Check:
    def check(root: Path) -> None:
        assert os.path.samestat(resolve(root, a).stat(), resolve(root, b).stat())

    return check


def not_same_file(a: str, b: str) -> Check:
    def check(root: Path) -> None:
        assert not os.path.samestat(resolve(root, a).stat(), resolve(root, b).stat())

    return check


def value(name: str, content: bytes) -> Check:
    return lambda root: _eq((root / name).read_bytes(), content)


def _eq(a: object, b: object) -> None:
    assert a == b


def absent(name: str) -> Check:
    return lambda root: _eq(os.path.lexists(root / name), False)


def whited_out(name: str) -> Check:
    def check(root: Path) -> None:
        st = os.lstat(root / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    return check


def is_symlink(name: str) -> Check:
    return lambda root: _eq((root / name).is_symlink(), True)


def all_of(*checks: Check) -> Check:
    def check(root: Path) -> None:
        for c in checks:
            c(root)

    return check


def pre_etc(passwd: bytes = b"inside") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / "etc").mkdir(mode=0o755)
        (root / "etc/passwd").write_bytes(passwd)

    return make


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for s in steps:
            s(root)

    return make


def mk_symlink(target: str, name: str) -> Callable[[Path], None]:
    return lambda root: os.symlink(target, root / name)


def mk_dir(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).mkdir()


def mk_file(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: _write(root / name, data)


def _write(p: Path, data: bytes) -> None:
    p.write_bytes(data)


def mk_link(target: str, name: str) -> Callable[[Path], None]:
    return lambda root: os.link(
        resolve(root, target), resolve(root, os.path.dirname(name)) / os.path.basename(name)
    )


U = b"unbroken"
PASSWD = [dir_("etc", 0o770), file("/etc/passwd", b"inside")]

# name -> (prepare the upper, members, check of the upper or the error class)
CASES: dict[str, tuple[Callable[[Path], None] | None, list, Check | type[Exception]]] = {
    "SymlinkAbsolute": (
        None,
        [dir_("etc"), symlink("/etc", "localetc"), file("/localetc/unbroken", U)],
        unbroken,
    ),
    "SymlinkUpAndOut": (
        None,
        [
            dir_("etc"),
            dir_("dummy"),
            symlink("/dummy/../etc", "localetc"),
            file("/localetc/unbroken", U),
        ],
        unbroken,
    ),
    "SymlinkMultipleAbsolute": (
        None,
        [
            dir_("etc"),
            dir_("dummy"),
            symlink("/etc", "/dummy/etc"),
            symlink("/dummy/etc", "localetc"),
            file("/dummy/etc/unbroken", U),
        ],
        unbroken,
    ),
    "SymlinkMultipleRelative": (
        None,
        [
            dir_("etc"),
            dir_("dummy"),
            symlink("/etc", "/dummy/etc"),
            symlink("./dummy/etc", "localetc"),
            file("/dummy/etc/unbroken", U),
        ],
        unbroken,
    ),
    "SymlinkEmptyFile": (
        None,
        [
            dir_("etc"),
            file("etc/emptied", b"notempty"),
            symlink("/etc", "localetc"),
            file("/localetc/emptied", b""),
        ],
        value("etc/emptied", b""),
    ),
    "HardlinkRelative": (
        None,
        [
            *PASSWD,
            dir_("breakouts"),
            symlink("../../etc", "breakouts/d1"),
            link("/breakouts/d1/passwd", "breakouts/mypasswd"),
        ],
        same_file("/breakouts/mypasswd", "/etc/passwd"),
    ),
    "HardlinkDownAndOut": (
        None,
        [
            *PASSWD,
            dir_("breakouts"),
            dir_("downandout"),
            symlink("../downandout/../../etc", "breakouts/d1"),
            link("/breakouts/d1/passwd", "breakouts/mypasswd"),
        ],
        same_file("/breakouts/mypasswd", "/etc/passwd"),
    ),
    "HardlinkAbsolute": (
        None,
        [*PASSWD, symlink("/etc", "localetc"), link("/localetc/passwd", "localpasswd")],
        same_file("localpasswd", "/etc/passwd"),
    ),
    "HardlinkRelativeLong": (
        None,
        [
            *PASSWD,
            symlink("../../../../../../../etc", "localetc"),
            link("/localetc/passwd", "localpasswd"),
        ],
        same_file("localpasswd", "/etc/passwd"),
    ),
    "HardlinkRelativeUpAndOut": (
        None,
        [
            *PASSWD,
            symlink("upandout/../../../etc", "localetc"),
            link("/localetc/passwd", "localpasswd"),
        ],
        same_file("localpasswd", "/etc/passwd"),
    ),
    "HardlinkDirectRelative": (
        None,
        [*PASSWD, link("../../../../../etc/passwd", "localpasswd")],
        same_file("localpasswd", "/etc/passwd"),
    ),
    "HardlinkDirectAbsolute": (
        None,
        [*PASSWD, link("/etc/passwd", "localpasswd")],
        same_file("localpasswd", "/etc/passwd"),
    ),
    "SymlinkParentDirectory": (
        None,
        [*PASSWD, symlink("/etc/", ".."), link("/etc/passwd", "localpasswd")],
        same_file("/localpasswd", "/etc/passwd"),
    ),
    "SymlinkEmptyFilename": (
        None,
        [*PASSWD, symlink("/etc/", ""), link("/etc/passwd", "localpasswd")],
        same_file("/localpasswd", "/etc/passwd"),
    ),
    "SymlinkParentRelative": (
        None,
        [
            *PASSWD,
            symlink("/etc/", "localetc/sub/.."),
            link("/etc/passwd", "/localetc/localpasswd"),
        ],
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "SymlinkSlashEnded": (
        None,
        [*PASSWD, dir_("localetc/", 0o770), link("/etc/passwd", "/localetc/localpasswd")],
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "SymlinkOverrideDirectory": (
        then(pre_etc(), mk_dir("localetc")),
        [symlink("/etc", "localetc"), link("/etc/passwd", "/localetc/localpasswd")],
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "SymlinkOverrideDirectoryRelative": (
        then(pre_etc(), mk_dir("localetc")),
        [symlink("../../etc", "localetc"), link("/etc/passwd", "/localetc/localpasswd")],
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "DirectoryOverrideSymlink": (
        then(pre_etc(), mk_symlink("/etc", "localetc")),
        [dir_("/localetc/"), link("/etc/passwd", "/localetc/localpasswd")],
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "DirectoryOverrideSymlinkAndHardlink": (
        then(
            pre_etc(),
            mk_symlink("etc", "localetc"),
            mk_link("/etc/passwd", "/localetc/localpasswd"),
        ),
        [dir_("/localetc/"), file("/localetc/localpasswd", b"different")],
        not_same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    "WhiteoutRootParent": (pre_etc(), [file(".wh...", b"")], InvalidArgumentError),
    "WhiteoutParent": (pre_etc(), [file("etc/.wh...", b"")], InvalidArgumentError),
    "WhiteoutRoot": (pre_etc(), [file(".wh..", b"")], InvalidArgumentError),
    "WhiteoutCurrentDirectory": (pre_etc(), [file("etc/.wh..", b"")], InvalidArgumentError),
    # overlay: the symlink is replaced by a whiteout device, /etc stays
    "WhiteoutSymlink": (
        then(pre_etc(b"all users"), mk_symlink("/etc", "localetc")),
        [file(".wh.localetc", b"")],
        all_of(value("etc/passwd", b"all users"), whited_out("localetc")),
    ),
    "WhiteoutSymlinkPath": (
        then(
            pre_etc(b"all users"),
            mk_file("etc/whitedout", b"ahhhh"),
            mk_symlink("/etc", "localetc"),
        ),
        [file("localetc/.wh.whitedout", b"")],
        all_of(
            value("etc/passwd", b"all users"), whited_out("etc/whitedout"), is_symlink("localetc")
        ),
    ),
    "WhiteoutDirectoryName": (
        then(
            pre_etc(b"all users"),
            mk_file("etc/whitedout", b"ahhhh"),
            mk_symlink("/etc", "localetc"),
        ),
        [file(".wh.etc/somefile", b"non-empty")],
        all_of(value("etc/passwd", b"all users"), value(".wh.etc/somefile", b"non-empty")),
    ),
    # the dead symlink's target is made inside the root, and the whiteout put there
    "WhiteoutDeadSymlinkParent": (
        then(pre_etc(b"all users"), mk_symlink("/dne", "localetc")),
        [file("localetc/.wh.etc", b"")],
        all_of(value("etc/passwd", b"all users"), whited_out("dne/etc")),
    ),
    "WhiteoutRelativePath": (
        then(pre_etc(b"all users"), mk_symlink("/dne", "localetc")),
        [file("dne/../.wh.etc", b"")],
        all_of(absent("etc/passwd"), whited_out("etc")),
    ),
    "HardlinkSymlinkBeforeCreateTarget": (
        None,
        [
            dir_("etc", 0o770),
            symlink("/etc/passwd", "localpasswd"),
            link("localpasswd", "localpasswd-dup"),
            file("/etc/passwd", b"after"),
        ],
        same_file("localpasswd-dup", "/etc/passwd"),
    ),
    "HardlinkSymlinkRelative": (
        None,
        [
            *PASSWD,
            symlink("../../../../../etc/passwd", "passwdlink"),
            link("/passwdlink", "localpasswd"),
        ],
        all_of(
            is_symlink("localpasswd"),
            same_file("/localpasswd", "/etc/passwd"),
            lambda r: _eq(os.readlink(r / "localpasswd"), os.readlink(r / "passwdlink")),
        ),
    ),
    "HardlinkSymlinkAbsolute": (
        None,
        [*PASSWD, symlink("/etc/passwd", "passwdlink"), link("/passwdlink", "localpasswd")],
        all_of(is_symlink("localpasswd"), same_file("/localpasswd", "/etc/passwd")),
    ),
}


@pytest.fixture
def snap(tmp_path: Path):
    sn = pysnap.OverlaySnapshotter(tmp_path / "root", upperdir_label=True, sync=False)
    sn.prepare("k")
    yield sn, Path(sn.stat("k").labels[UPPERDIR_LABEL])
    sn.close()


def _outside(tmp_path: Path, upper: Path) -> list[tuple[str, int, int]]:
    """Every path outside the upper with its mode and (files) mtime and size.

    The metadata store's files change with every transaction (LMDB's reader
    table): only their presence is compared. The snapshot's record of the
    directories the apply made implicitly (it has no parent) is the apply's own.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        if Path(dirpath) == upper:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if Path(dirpath) == upper.parent and n == implied.RECORD:
                continue
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) or n.endswith(".mdb"):
                out.append((p, st.st_mode, 0))
            else:
                out.append((p, st.st_mode, st.st_mtime_ns + st.st_size))
    return sorted(out)


@pytest.mark.parametrize("case", CASES)
def test_breakout(snap, tmp_path: Path, case: str) -> None:
    sn, upper = snap
    prepare, members, expect = CASES[case]
    if prepare:
        prepare(upper)
    before = _outside(tmp_path, upper)
    blob = tar(*members)
    if isinstance(expect, type):
        with pytest.raises(expect):
            sn.apply("k", io.BytesIO(blob))
    else:
        sn.apply("k", io.BytesIO(blob))
        expect(upper)
    assert _outside(tmp_path, upper) == before


def test_symlink_override_path(snap, tmp_path: Path) -> None:
    """SymlinkOverridePath: a dir replaced by a symlink to / and back writes nothing outside."""
    sn, upper = snap
    name = "breakout-" + tmp_path.name
    host = Path("/tmp") / name
    members = [
        dir_("foo"),
        dir_("foo/tmp"),
        file(f"foo/tmp/{name}", b"\0\1\2"),
        symlink("/", "foo"),
        file(f"foo/tmp/{name}", b"\3\4\5"),
        dir_("foo"),
        dir_("foo/tmp"),
        file(f"foo/tmp/{name}", b"\6\7\x08"),
    ]
    sn.apply("k", io.BytesIO(tar(*members)))
    assert not host.exists()
    assert (upper / "foo/tmp" / name).read_bytes() == b"\6\7\x08"
    assert (upper / "tmp" / name).read_bytes() == b"\3\4\5"  # where "/" was: the root


def test_hardlink_symlink_chmod(snap, tmp_path: Path) -> None:
    """HardlinkSymlinkChmod: linking a symlink that points outside changes nothing there."""
    sn, upper = snap
    p = tmp_path / "perm400"
    p.write_bytes(b"...")
    p.chmod(0o400)
    ep = tmp_path / "also-exists-outside-root"
    ep.write_bytes(b"...")
    ep.chmod(0o640)
    sn.apply("k", io.BytesIO(tar(symlink(str(p), str(ep)), link(str(ep), "sketchylink"))))
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o400
    assert stat.S_IMODE(os.lstat(ep).st_mode) == 0o640
    assert os.readlink(upper / "sketchylink") == str(p)  # the symlink itself, linked
