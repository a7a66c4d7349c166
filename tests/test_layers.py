"""Applying OCI layers into snapshots and diffing them back (issue 12), on real trees and mounts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import zstandard
from isal import isal_zlib
from layertar import MTIME, dir_, file, link, node, opaque, symlink, tar, whiteout
from trees import make_chain, tree_state

import pysnap
from pysnap.cli import main
from pysnap.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from pysnap.fsutil import remove_tree
from pysnap.overlay import UPPERDIR_LABEL

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root (chown, mknod)")

OCI = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def sn(tmp_path: Path):
    s = pysnap.OverlaySnapshotter(tmp_path / "root", upperdir_label=True, sync=False)
    yield s
    s.close()


def upper(sn: pysnap.OverlaySnapshotter, key: str) -> Path:
    return Path(sn.stat(key).labels[UPPERDIR_LABEL])


def gzip(data: bytes) -> bytes:
    c = isal_zlib.compressobj(2, 8, 31)
    return c.compress(data) + c.flush()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


EVERY_TYPE = [
    dir_("etc", 0o755, mtime=1000),
    file("etc/passwd", b"root:x:0:0\n", 0o644, uid=1, gid=2, mtime=1234),
    file("bin/su", b"\x7fELF", 0o4755),
    dir_("tmp", 0o1777),
    file("etc/shadow", b"s", 0o640, pax_headers={"mtime": "1700000000.123456789"}),
    file(
        "etc/cap",
        b"c",
        pax_headers={"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.secret": "x"},
    ),
    symlink("/etc/passwd", "etc/pw", uid=3, gid=4),
    link("etc/passwd", "etc/passwd.hard"),
    node("dev/null", tarfile.CHRTYPE, 1, 3, 0o666),
    node("dev/loop0", tarfile.BLKTYPE, 7, 0, 0o660),
    node("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    file("long/" + "n" * 120 + "/" + "f" * 200, b"long name"),
    symlink("t" * 150, "longlink"),
]


def test_every_entry_type(sn, caplog) -> None:
    sn.prepare("k")
    blob = tar(*EVERY_TYPE)
    layer = sn.apply("k", io.BytesIO(blob))
    assert layer == pysnap.Layer(sha(blob), sha(blob), len(blob), OCI, len(EVERY_TYPE))
    u = upper(sn, "k")
    st = os.lstat(u / "etc/passwd")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (1, 2, 1234e9, 0o644)
    assert stat.S_IMODE(os.lstat(u / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(u / "tmp").st_mode) == 0o1777
    assert os.lstat(u / "etc/shadow").st_mtime_ns == 1700000000123456789
    assert os.getxattr(u / "etc/cap", "user.note") == b"hello"
    with pytest.raises(OSError):
        os.getxattr(u / "etc/cap", "trusted.secret")
    assert "trusted.secret" in caplog.text
    assert os.readlink(u / "etc/pw") == "/etc/passwd"
    assert os.lstat(u / "etc/pw").st_uid == 3
    assert os.path.samestat(os.lstat(u / "etc/passwd"), os.lstat(u / "etc/passwd.hard"))
    assert os.lstat(u / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(u / "dev/loop0").st_mode)
    assert stat.S_ISFIFO(os.lstat(u / "run/fifo").st_mode)
    assert (u / "long" / ("n" * 120) / ("f" * 200)).read_bytes() == b"long name"
    assert os.readlink(u / "longlink") == "t" * 150
    assert os.lstat(u / "etc").st_mtime_ns == 1000e9  # set after its contents
    assert stat.S_IMODE(os.lstat(u).st_mode) == 0o755  # the root keeps its mode


def test_gnu_and_ustar_formats(sn) -> None:
    sn.prepare("k")
    members = [file("a/" + "x" * 150, b"gnu"), symlink("y" * 120, "b")]
    sn.apply("k", io.BytesIO(tar(*members, format=tarfile.GNU_FORMAT)))
    u = upper(sn, "k")
    assert (u / "a" / ("x" * 150)).read_bytes() == b"gnu"
    assert os.readlink(u / "b") == "y" * 120
    sn.prepare("k2")
    sn.apply("k2", io.BytesIO(tar(file("p/" * 40 + "z", b"prefix"), format=tarfile.USTAR_FORMAT)))
    assert (upper(sn, "k2") / ("p/" * 40 + "z")).read_bytes() == b"prefix"


def test_compressed_layers(sn) -> None:
    blob = tar(file("a", b"a" * 100_000), file("b", b"b"))
    trailing = blob + b"\0" * 4096  # bytes after the end blocks are hashed too
    two_members = gzip(trailing[:5000]) + gzip(trailing[5000:])
    cctx = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    frames = cctx.compress(trailing[:7000]) + skippable + cctx.compress(trailing[7000:])
    for i, (data, media) in enumerate([(two_members, OCI + "+gzip"), (frames, OCI + "+zstd")]):
        sn.prepare(f"k{i}")
        layer = sn.apply(f"k{i}", io.BytesIO(data), diff_id=sha(trailing))
        assert layer == pysnap.Layer(sha(trailing), sha(data), len(data), media, 2)
        assert (upper(sn, f"k{i}") / "a").read_bytes() == b"a" * 100_000


def test_zstd_window_over_32mib_refused(sn) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=26)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()  # size unknown
    data = c.compress(tar(file("a", b"a"))) + c.flush()
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError, match="32 MiB"):
        sn.apply("k", io.BytesIO(data))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda b: b[:700], "truncated"),
        (lambda b: b[:1000], "truncated"),
        (lambda b: b"\x01" * 2048, "checksum"),
        (lambda b: gzip(b)[:-20], "gzip"),
        (lambda b: b"BZh91AY&SY", "bzip2"),
        (lambda b: b + b"garbage" if False else gzip(b) + b"garbage!", "garbage"),
    ],
)
def test_bad_streams_refused_and_upper_emptied(sn, bad, match) -> None:
    sn.prepare("k")
    blob = tar(file("a", b"x" * 600), file("b", b"y"))
    with pytest.raises(InvalidArgumentError, match=match) as e:
        sn.apply("k", io.BytesIO(bad(blob)))
    assert os.listdir(upper(sn, "k")) == []
    assert "emptied again" in "".join(e.value.__notes__)


def test_lying_size_header(sn) -> None:
    blob = bytearray(tar(file("a", b"x" * 10)))
    blob[124:136] = b"%011o\0" % 10**6  # the size says 1 MB, the stream has 10 bytes
    blob[148:156] = b" " * 8
    blob[148:155] = b"%06o\0" % sum(blob[:512])
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError, match="truncated"):
        sn.apply("k", io.BytesIO(bytes(blob)))


@pytest.mark.parametrize(
    "members, match",
    [
        ([link("missing", "l")], "does not exist"),
        ([dir_("d"), link("d", "l")], "directory"),
        ([link("/", "l")], "directory"),
        ([file("f"), file("f/x")], "not a directory"),
    ],
)
def test_bad_entries(sn, members, match) -> None:
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError, match=match):
        sn.apply("k", io.BytesIO(tar(*members)))
    assert os.listdir(upper(sn, "k")) == []


def test_failure_on_a_non_empty_upper_says_partly_applied(sn) -> None:
    sn.prepare("k")
    sn.apply("k", io.BytesIO(tar(file("first"))))
    with pytest.raises(InvalidArgumentError) as e:
        sn.apply("k", io.BytesIO(tar(file("second"), link("missing", "l"))))
    assert "partly applied" in "".join(e.value.__notes__)
    assert sorted(os.listdir(upper(sn, "k"))) == ["first", "second"]


def test_diff_id_mismatch(sn) -> None:
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError, match="diff ID"):
        sn.apply("k", io.BytesIO(tar(file("a"))), diff_id="sha256:" + "0" * 64)
    assert os.listdir(upper(sn, "k")) == []


def test_states(sn) -> None:
    with pytest.raises(NotFoundError):
        sn.apply("nope", io.BytesIO(tar()))
    sn.prepare("k")
    sn.apply("k", io.BytesIO(tar(file("a"))))
    sn.commit("c", "k")
    assert sn.diff("c", io.BytesIO(), compression=None).entries == 1  # a committed layer
    with pytest.raises(NotFoundError):
        sn.diff("nope", io.BytesIO())
    with pytest.raises(FailedPreconditionError, match="not active"):
        sn.apply("c", io.BytesIO(tar()))
    sn.view("v", "c")
    with pytest.raises(FailedPreconditionError):
        sn.diff("v", io.BytesIO())


@pytest.mark.root
def test_mounted_upper_refused_unless_forced(sn, tmp_path: Path) -> None:
    sn.prepare("base")
    sn.commit("b", "base")
    mounts = sn.prepare("k", "b")
    target = tmp_path / "mnt"
    target.mkdir()
    pysnap.mount_all(mounts, target)
    try:
        with pytest.raises(FailedPreconditionError, match="mounted"):
            sn.apply("k", io.BytesIO(tar(file("a"))))
        sn.apply("k", io.BytesIO(tar(file("a"))), force=True)
    finally:
        pysnap.unmount(target)


def test_apply_excludes_commit_remove_and_diff(sn) -> None:
    sn.prepare("k")
    r, w = os.pipe()
    done: list[object] = []
    with os.fdopen(r, "rb") as rf:
        t = threading.Thread(target=lambda: done.append(sn.apply("k", rf)))
        t.start()
        with os.fdopen(w, "wb") as wf:
            wf.write(tar(file("a"))[:512])  # the apply is now waiting for more
            wf.flush()
            time.sleep(0.2)
            with pytest.raises(FailedPreconditionError, match="busy"):
                sn.commit("c", "k")
            with pytest.raises(FailedPreconditionError, match="busy"):
                sn.remove("k")
            with pytest.raises(FailedPreconditionError, match="busy"):
                sn.apply("k", io.BytesIO(tar()))
            with pytest.raises(FailedPreconditionError, match="busy"):
                sn.diff("k", io.BytesIO())  # the tree is changing under it
            wf.write(tar(file("a"))[512:])
        t.join()
    assert isinstance(done[0], pysnap.Layer)
    sn.commit("c", "k")


def test_a_commit_between_apply_s_read_and_its_lock_is_seen(sn, monkeypatch) -> None:
    # The window between apply's read of the record and its lock: a commit that
    # runs there entirely must not leave the apply writing into the committed layer.
    import pysnap.archive.apply as apply_module

    real = apply_module.guard.exclusive

    def commit_first(snapshot_dir: str, op: str, key: str, **kw: bool):  # type: ignore[no-untyped-def]
        if op == "apply":
            sn.commit("layer", key)
        return real(snapshot_dir, op, key, **kw)

    sn.prepare("k")
    monkeypatch.setattr(apply_module.guard, "exclusive", commit_first)
    with pytest.raises(NotFoundError):
        sn.apply("k", io.BytesIO(tar(file("late.txt"))))
    monkeypatch.undo()
    assert os.listdir(upper(sn, "layer")) == []
    assert sn.usage("layer").inodes == 1


def test_a_remove_locks_the_snapshot_it_removes(sn, monkeypatch) -> None:
    # remove read k's id, then k was removed, made again and an apply of the new
    # one began: that apply's lock holds, and the new k stays.
    import pysnap.overlay as overlay_module

    real = overlay_module.guard.exclusive
    held = contextlib.ExitStack()
    raced: list[bool] = []

    def replace_first(snapshot_dir: str, op: str, key: str, **kw: bool):  # type: ignore[no-untyped-def]
        if op == "remove" and not raced:
            raced.append(True)
            sn.remove(key)
            sn.prepare(key)
            new_dir = os.path.dirname(upper(sn, key))
            held.enter_context(real(new_dir, "apply", key))  # as a running apply holds it
        return real(snapshot_dir, op, key, **kw)

    sn.prepare("k")
    monkeypatch.setattr(overlay_module.guard, "exclusive", replace_first)
    with held, pytest.raises(FailedPreconditionError, match="busy"):
        sn.remove("k")
    monkeypatch.undo()
    assert raced and sn.stat("k").kind == pysnap.Kind.ACTIVE
    assert os.path.isdir(upper(sn, "k"))
    sn.remove("k")


def test_killed_apply_leaves_a_mark(sn, tmp_path: Path) -> None:
    sn.prepare("k")
    sn.close()
    code = (
        "import sys, pysnap\n"
        f"sn = pysnap.OverlaySnapshotter({str(tmp_path / 'root')!r}, sync=False)\n"
        "sn.apply('k', sys.stdin.buffer)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    assert p.stdin is not None
    p.stdin.write(tar(file("a", b"x" * 10000))[:2048])
    p.stdin.flush()
    mark = tmp_path / "root/snapshots/1/applying"
    for _ in range(200):
        if mark.exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdin.close()
    with pysnap.OverlaySnapshotter(tmp_path / "root", sync=False) as sn2:
        with pytest.raises(FailedPreconditionError, match="interrupted"):
            sn2.commit("c", "k")
        with pytest.raises(FailedPreconditionError, match="interrupted"):
            sn2.apply("k", io.BytesIO(tar()))
        sn2.remove("k")


def test_sync_apply(sn) -> None:
    sn.prepare("k")
    assert sn.apply("k", io.BytesIO(tar(file("a", b"x"))), sync=True).entries == 1


def test_implied_parents_take_lower_metadata(sn) -> None:
    sn.prepare("base")
    sn.apply(
        "base",
        io.BytesIO(
            tar(
                dir_("usr", 0o750, uid=5, gid=6, mtime=111),
                dir_("usr/bin", 0o700, uid=7, mtime=222),
                symlink("usr/lib", "lib"),
            )
        ),
    )
    sn.commit("b", "base")
    sn.prepare("k", "b")
    sn.apply("k", io.BytesIO(tar(file("usr/bin/x"), file("lib/y"))))
    u = upper(sn, "k")
    st = os.lstat(u / "usr/bin")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o700, 7, 222e9)
    st = os.lstat(u / "usr")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o750, 5, 6, 111e9)
    # a symlink only in a lower layer is not followed: a real lib/ in the upper
    assert stat.S_ISDIR(os.lstat(u / "lib").st_mode)


@pytest.mark.root
def test_view_of_an_applied_chain(sn, tmp_path: Path) -> None:
    layers = [
        tar(
            dir_("a"),
            file("a/old"),
            file("a/keep"),
            dir_("o"),
            file("o/x"),
            dir_("r"),
            file("r/child"),
            file("gone"),
            file("top"),
        ),
        tar(
            whiteout("gone"),
            whiteout("a/old"),
            dir_("o"),
            opaque("o"),
            file("o/new"),
            whiteout("r"),
            dir_("r"),
            file("r/fresh"),
        ),
        tar(file("gone", b"back")),
    ]
    parent = ""
    for i, blob in enumerate(layers):
        sn.prepare(f"k{i}", parent)
        sn.apply(f"k{i}", io.BytesIO(blob))
        sn.commit(f"c{i}", f"k{i}")
        parent = f"c{i}"
    sn.view("v", parent)
    target = tmp_path / "mnt"
    target.mkdir()
    pysnap.mount_all(sn.mounts("v"), target)
    try:
        seen = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    finally:
        pysnap.unmount(target)
    assert seen == ["a", "a/keep", "gone", "o", "o/new", "r", "r/fresh", "top"]


# ---- diff ----------------------------------------------------------------------


def normalised(blob: bytes) -> list[tuple]:
    """The entries of a layer as tarfile reads them, in canonical form (the issue's rule)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        for m in t:
            name = m.name.rstrip("/")
            if name in ("", "."):
                continue
            data = t.extractfile(m).read() if m.isreg() else b""
            xattrs = {
                k: v
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.") and not k.startswith("SCHILY.xattr.trusted")
            }
            whiteout = os.path.basename(name).startswith(".wh.")  # devices 0/0 keep no mode
            out[name] = (
                m.type if m.type != tarfile.AREGTYPE else tarfile.REGTYPE,
                0 if whiteout else m.mode,
                m.uid,
                m.gid,
                float(m.pax_headers.get("mtime", m.mtime)),
                m.linkname,
                m.devmajor if m.ischr() or m.isblk() else 0,
                m.devminor if m.ischr() or m.isblk() else 0,
                data,
                xattrs,
            )
            if m.islnk():  # a hard link is its target's inode: only the target counts
                out[name] = (m.type, m.linkname)
    return sorted(out.items())


def test_diff_of_apply_is_the_layer(sn) -> None:
    members = [m for m in EVERY_TYPE if "trusted" not in str(m[0].pax_headers)]
    members = [
        dir_("bin", mtime=MTIME),
        dir_("dev"),
        dir_("run"),
        dir_("long"),
        dir_("long/" + "n" * 120),
        *members,
        whiteout("etc/gone"),
        dir_("opq"),
        opaque("opq"),
        file("opq/in"),
    ]
    blob = tar(*members)
    sn.prepare("k")
    sn.apply("k", io.BytesIO(blob))
    out = io.BytesIO()
    layer = sn.diff("k", out, compression=None)
    assert layer.diff_id == layer.digest == sha(out.getvalue())
    assert layer.entries == len(members)
    assert normalised(out.getvalue()) == normalised(blob)


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_diff_is_deterministic_and_applies_back(sn, tmp_path: Path, compression) -> None:
    sn.prepare("k")
    sn.apply("k", io.BytesIO(tar(*EVERY_TYPE[:4], dir_("d"), file("d/f", os.urandom(3000)))))
    first = sn.diff("k", tmp_path / "one", compression=compression)
    second = sn.diff("k", tmp_path / "two", compression=compression)
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()
    assert first == second
    assert first.size == (tmp_path / "one").stat().st_size
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    sn.prepare("again")
    back = sn.apply("again", tmp_path / "one")
    assert (back.diff_id, back.digest, back.media_type) == (
        first.diff_id,
        first.digest,
        first.media_type,
    )
    assert tree_state(upper(sn, "again")) == tree_state(upper(sn, "k"))


@pytest.mark.root
def test_apply_of_diff_reproduces_the_mounted_tree(sn, tmp_path: Path) -> None:
    sn.prepare("base")
    sn.apply("base", io.BytesIO(tar(dir_("a"), file("a/x"), file("a/y"), dir_("b"), file("b/z"))))
    sn.commit("b0", "base")
    mounts = sn.prepare("work", "b0")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pysnap.mount_all(mounts, mnt)
    try:  # changes made through overlayfs: it writes whiteouts and opaque dirs itself
        os.unlink(mnt / "a/x")
        (mnt / "a/new").write_bytes(b"new")
        os.setxattr(mnt / "a/new", "user.k", b"v")
        subprocess.run(["rm", "-rf", str(mnt / "b")], check=True)
        (mnt / "b").mkdir()
        (mnt / "b/again").write_bytes(b"again")
        os.link(mnt / "a/new", mnt / "hard")
        # hard links of every other type too, as containerd writes them
        os.symlink("a/new", mnt / "sl")
        os.mkfifo(mnt / "fifo")
        os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        for name in ("sl", "fifo", "null"):
            os.link(mnt / name, mnt / f"{name}-link", follow_symlinks=False)
        os.utime(mnt / "a/y", ns=(5, 1_500_000_000_123_456_789))
        expected = tree_state(mnt)
    finally:
        pysnap.unmount(mnt)
    layer = sn.diff("work", tmp_path / "layer.tar.gz")
    sn.prepare("copy", "b0")
    assert sn.apply("copy", tmp_path / "layer.tar.gz").diff_id == layer.diff_id
    for name in ("hard", "sl", "fifo", "null"):
        first, second = (
            os.lstat(upper(sn, "copy") / n)
            for n in (name, f"{name}-link" if name != "hard" else "a/new")
        )
        assert (first.st_ino, first.st_nlink) == (second.st_ino, 2), name
    sn.view("v", "b0")
    pysnap.mount_all(sn.prepare("check", "b0"), mnt)
    pysnap.unmount(mnt)
    sn.remove("check")
    sn.commit("c1", "copy")
    sn.view("v1", "c1")
    pysnap.mount_all(sn.mounts("v1"), mnt)
    try:
        got = tree_state(mnt)
    finally:
        pysnap.unmount(mnt)
    # directories' own mtimes are the only thing overlayfs may have touched differently
    assert {k: v[:3] + v[4:] for k, v in got.items()} == {
        k: v[:3] + v[4:] for k, v in expected.items()
    }
    assert {k: v[3] for k, v in got.items() if not stat.S_ISDIR(v[0])} == {
        k: v[3] for k, v in expected.items() if not stat.S_ISDIR(v[0])
    }


def test_diff_leaves_out_trusted_and_selinux_xattrs(sn) -> None:
    sn.prepare("k")
    f = upper(sn, "k") / "f"
    f.write_bytes(b"x")
    xattrs = {"user.k": b"v", "security.capability": b"\x01\x00\x00\x02" + bytes(16)}
    for name, value in {**xattrs, "trusted.k": b"t", "security.selinux": b"x_u:x_r:x_t:s0"}.items():
        os.setxattr(f, name, value)
    out = io.BytesIO()
    sn.diff("k", out, compression=None)
    out.seek(0)
    (member,) = [m for m in tarfile.open(fileobj=out) if m.name == "f"]
    got = {
        k.removeprefix("SCHILY.xattr."): v
        for k, v in member.pax_headers.items()
        if k.startswith("SCHILY.xattr.")
    }
    assert got == {k: v.decode("latin-1") for k, v in xattrs.items()}


def test_diff_refuses_redirect_dir_uppers(sn) -> None:
    sn.prepare("k")
    d = upper(sn, "k") / "moved"
    d.mkdir()
    os.setxattr(d, "trusted.overlay.redirect", b"/old")
    with pytest.raises(FailedPreconditionError, match="redirect_dir"):
        sn.diff("k", io.BytesIO())


@pytest.mark.parametrize(
    ("compression", "level"), [("zstd", 0), ("zstd", 23), ("gzip", 4), ("gzip", -1), (None, 5)]
)
def test_diff_level_out_of_range_is_invalid(sn, tmp_path: Path, compression, level) -> None:
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError, match="takes"):
        sn.diff("k", tmp_path / "out", compression=compression, level=level)
    assert os.listdir(tmp_path) == ["root"]  # nothing written


def test_diff_bad_compression(sn) -> None:
    sn.prepare("k")
    with pytest.raises(InvalidArgumentError):
        sn.diff("k", io.BytesIO(), compression="lz4")


def test_cli_apply_and_diff(sn, tmp_path: Path, capsys) -> None:
    sn.prepare("k")
    sn.close()
    (tmp_path / "l.tar").write_bytes(tar(file("a", b"cli")))
    root = str(tmp_path / "root")
    assert main(["--root", root, "--json", "apply", "k", str(tmp_path / "l.tar")]) == 0
    assert '"entries": 1' in capsys.readouterr().out
    assert (
        main(["--root", root, "diff", "k", str(tmp_path / "out.tar"), "--compression", "none"]) == 0
    )
    assert normalised((tmp_path / "out.tar").read_bytes())[0][0] == "a"
    assert main(["--root", root, "apply", "nope", str(tmp_path / "l.tar")]) == 3
    remote = ["--address", str(tmp_path / "no.sock")]
    assert main([*remote, "apply", "k", str(tmp_path / "l.tar")]) == 12  # local only
    assert main([*remote, "diff", "k", str(tmp_path / "x")]) == 12


@pytest.mark.parametrize(
    "flags",
    [
        ["--format=gnu"],
        ["--format=posix"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=0.0"],
    ],
)
def test_gnu_sparse_files(sn, tmp_path: Path, flags) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes", "wb") as f:
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek(5 << 20)
        f.write(b"end")
        f.truncate(8 << 20)
    with open(src / "allhole", "wb") as f:
        f.truncate(3 << 20)
    (src / "plain").write_bytes(b"after the sparse ones")
    subprocess.run(
        [
            "tar",
            "--sparse",
            *flags,
            "-cf",
            str(tmp_path / "s.tar"),
            "-C",
            str(src),
            "holes",
            "allhole",
            "plain",
        ],
        check=True,
    )
    sn.prepare("k")
    sn.apply("k", tmp_path / "s.tar")
    u = upper(sn, "k")
    for name in ("holes", "allhole", "plain"):
        assert (u / name).read_bytes() == (src / name).read_bytes()
    assert os.stat(u / "holes").st_blocks * 512 < 1 << 20  # the holes stayed holes


def test_kernel_refusal_of_the_opaque_xattr_is_explained(public_tmp: Path) -> None:
    """Without CAP_SYS_ADMIN (a user namespace, Docker in Docker) trusted.* is refused."""
    from privileges import as_nobody

    from pysnap.archive.apply import apply_stream

    target = public_tmp / "upper"
    target.mkdir()
    os.chown(target, 65534, 65534)
    blob = tar(dir_("d", uid=65534, gid=65534), opaque("d"))
    with pytest.raises(PermissionError) as e:
        as_nobody(lambda: apply_stream(str(target), [], io.BytesIO(blob)))
    assert "user namespace" in "".join(e.value.__notes__)


def test_cli_diff_to_stdout_and_apply_from_stdin(
    sn, tmp_path: Path, capsysbinary, monkeypatch
) -> None:
    sn.prepare("k")
    sn.apply("k", io.BytesIO(tar(file("a", b"piped"))))
    sn.close()
    root = str(tmp_path / "root")
    assert main(["--root", root, "diff", "k", "-", "--compression", "zstd"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out.startswith(b"\x28\xb5\x2f\xfd")  # the layer on stdout
    assert b"DIGEST" in captured.err  # the report on stderr
    with pysnap.OverlaySnapshotter(root, sync=False) as s2:
        s2.prepare("k2")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(captured.out)))
    assert main(["--root", root, "apply", "k2", "-"]) == 0
    assert b"+zstd" in capsysbinary.readouterr().out


@pytest.mark.parametrize("xattr", [False, True], ids=["plain", "with-xattr"])
def test_a_file_after_a_merged_setgid_directory_keeps_its_own_group(sn, xattr: bool) -> None:
    # The second d/ merges into the first and makes it setgid 4242; d/f says gid 0.
    # With an xattr on the merge, the cached parent kept its old group and f got 4242.
    again = dir_("d", mode=0o2775, gid=4242)
    if xattr:
        again[0].pax_headers = {"SCHILY.xattr.user.x": "1"}
    sn.prepare("k")
    sn.apply("k", io.BytesIO(tar(dir_("d"), file("d/a"), again, file("d/f", uid=0, gid=0))))
    st = os.lstat(upper(sn, "k") / "d" / "f")
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.lstat(upper(sn, "k") / "d").st_gid == 4242


def test_owners_under_setgid_directories(sn) -> None:
    """Files take the tar's group, also where a setgid directory would give them its own."""
    sn.prepare("k")
    sn.apply(
        "k",
        io.BytesIO(
            tar(
                dir_("sg", 0o2775, gid=7),
                file("sg/root", gid=0),
                file("sg/seven", gid=7),
                dir_("m", 0o755),
                file("m/a"),
                dir_("m", 0o2755, gid=9),  # the same directory again: now setgid, group 9
                file("m/b", gid=0),
                file("m/c", gid=9),
                file("plain", uid=0, gid=0),
            )
        ),
    )
    u = upper(sn, "k")
    gids = {
        n: os.lstat(u / n).st_gid for n in ("sg/root", "sg/seven", "m/a", "m/b", "m/c", "plain")
    }
    assert gids == {"sg/root": 0, "sg/seven": 7, "m/a": 0, "m/b": 0, "m/c": 9, "plain": 0}
    assert os.lstat(u / "m").st_mode & 0o2000


# ---- what an entry replaces -----------------------------------------------


def _tree(top: Path) -> None:
    """top/ with a file, a hard link, a symlink, a read-only subdirectory, a fifo."""
    (top / "sub" / "ro").mkdir(parents=True)
    (top / "f").write_bytes(b"f")
    os.link(top / "f", top / "sub" / "f.hard")
    os.symlink("/etc", top / "sub" / "etc")
    (top / "sub" / "ro" / "g").write_bytes(b"g")
    os.mkfifo(top / "sub" / "fifo")
    (top / "sub" / "ro").chmod(0o555)


@pytest.mark.parametrize(
    "before, entry, check",
    [
        ("dir", file("x", b"new"), lambda p: p.read_bytes() == b"new"),
        ("dir", symlink("/etc", "x"), lambda p: os.readlink(p) == "/etc"),
        ("dir", whiteout("x"), lambda p: os.lstat(p).st_rdev == 0 and p.is_char_device()),
        ("file", dir_("x"), lambda p: p.is_dir() and not p.is_symlink() and not any(p.iterdir())),
        ("symlink", file("x", b"new"), lambda p: p.read_bytes() == b"new"),
        ("symlink", dir_("x"), lambda p: p.is_dir() and not p.is_symlink()),
        ("hardlink", file("x", b"new"), lambda p: p.read_bytes() == b"new"),
        ("hardlink", link("y", "x"), lambda p: p.read_bytes() == b"y"),
    ],
)
def test_an_entry_replaces_what_is_there(sn, before: str, entry, check) -> None:
    """Anything but a directory over a directory: the old entry goes, of any type;
    a symlink is removed, never followed, and a hard link's other name stays."""
    sn.prepare("k")
    u = upper(sn, "k")
    (u / "y").write_bytes(b"y")
    if before == "dir":
        (u / "x").mkdir()
        _tree(u / "x")
    elif before == "file":
        (u / "x").write_bytes(b"old")
    elif before == "symlink":
        (u / "target").mkdir()
        (u / "target" / "keep").write_bytes(b"keep")
        os.symlink("target", u / "x")
    else:
        os.link(u / "y", u / "x")
    sn.apply("k", io.BytesIO(tar(entry)))
    assert check(u / "x")
    assert (u / "y").read_bytes() == b"y"
    if before == "symlink":
        assert os.listdir(u / "target") == ["keep"]


def test_a_directory_deeper_than_any_recursion_is_replaced(sn) -> None:
    """An iterative removal: 10,000 levels (the old recursive one stopped at 4096)."""
    sn.prepare("k")
    u = upper(sn, "k")
    try:
        make_chain(u / "deep", 10_000)
        make_chain(u / "gone", 10_000)
        sn.apply("k", io.BytesIO(tar(file("deep", b"flat"), whiteout("gone"))))
        assert (u / "deep").read_bytes() == b"flat"
        assert (u / "gone").is_char_device()
    finally:  # what a failure leaves is too deep for pytest's clean-up (shutil.rmtree)
        remove_tree(u)


@pytest.mark.root
@pytest.mark.parametrize(
    "entry",
    [file("d/x", b"x"), dir_("d", mode=0o700), opaque("d"), link("d/a", "l"), dir_("d/new")],
    ids=["file-in-it", "merge", "opaque", "hardlink-to-it", "dir-in-it"],
)
def test_nothing_is_written_into_a_mount_inside_the_upper(
    sn, tmp_path: Path, mounted, entry
) -> None:
    """A volume bind-mounted at a directory of the upper: entries in it, on it or linking
    to it fail with EXDEV (openat2's RESOLVE_NO_XDEV), and the volume is unchanged."""
    from snapcore import mount as sysmount

    sn.prepare("k")
    u = upper(sn, "k")
    (u / "d").mkdir()
    src = tmp_path / "volume"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"keep")
    mounted("", str(src), u / "d", sysmount.MS_BIND)
    volume = tree_state(src)  # the root's mode and owner too, not its mtime
    mtime = os.stat(src).st_mtime_ns

    with pytest.raises(OSError) as e:
        sn.apply("k", io.BytesIO(tar(file("before"), entry)))
    assert (e.value.errno, e.value.filename.rstrip("/")) == (errno.EXDEV, entry[0].name)
    assert "nothing is written into another mount" in "".join(e.value.__notes__)
    assert tree_state(src) == volume
    assert os.stat(src).st_mtime_ns == mtime
    assert "trusted.overlay.opaque" not in os.listxattr(src)


@pytest.mark.root
@pytest.mark.parametrize("at", ["d/sub/vol", "d"])
@pytest.mark.parametrize(
    "entry",
    [file("d", b"x"), whiteout("d"), symlink("/", "d")],
    ids=["file", "whiteout", "symlink"],
)
def test_a_mount_inside_what_an_entry_replaces_is_left_alone(
    sn, tmp_path: Path, mounted, at: str, entry
) -> None:
    """A volume bind-mounted into the upper, below a directory the layer replaces:
    nothing of the mount is removed (it is outside the snapshotter's root), and the
    entry fails with EBUSY, as the kernel's rmdir of a mount point does."""
    from snapcore import mount as sysmount

    sn.prepare("k")
    u = upper(sn, "k")
    (u / "d" / "sub" / "vol").mkdir(parents=True)
    (u / "d" / "sub" / "other").write_bytes(b"goes")
    src = tmp_path / "volume"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "a").write_bytes(b"keep")
    (src / "deep" / "er" / "b").write_bytes(b"keep too")
    os.symlink("a", src / "deep" / "link")
    mounted("", str(src), u / at, sysmount.MS_BIND)
    volume = tree_state(src)

    with pytest.raises(OSError) as e:
        sn.apply("k", io.BytesIO(tar(file("before"), entry)))
    assert (e.value.errno, e.value.filename) == (errno.EBUSY, entry[0].name)
    assert "a mount lies at or below it" in "".join(e.value.__notes__)
    assert tree_state(src) == volume
    assert tree_state(u / at) == volume
    if at != "d":  # what is not the mount or above it went
        assert os.listdir(u / "d") == ["sub"]
        assert os.listdir(u / "d" / "sub") == ["vol"]
