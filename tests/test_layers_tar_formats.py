"""Tar format corners of the apply, read as Go's archive/tar (so containerd) reads them.

The archives are written header by header here (tarfile cannot write a PAX
header and a GNU long name for one entry, nor empty PAX values), so each
test shows the bytes it means.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from isal import isal_zlib
from layertar import dir_, file, link, symlink, tar
from trees import make_chain

import pysnap
from pysnap.errors import InvalidArgumentError
from pysnap.fsutil import remove_tree
from pysnap.overlay import UPPERDIR_LABEL
from snapcore import fsops

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root (chown, mknod)")

BLOCK = 512
END = b"\0" * (2 * BLOCK)


@pytest.fixture
def sn(tmp_path: Path):
    s = pysnap.OverlaySnapshotter(tmp_path / "root", upperdir_label=True, sync=False)
    s.prepare("k")
    yield s
    s.close()


def upper(sn: pysnap.OverlaySnapshotter, key: str = "k") -> Path:
    return Path(sn.stat(key).labels[UPPERDIR_LABEL])


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: str, type_: bytes, data: bytes = b"", linkname: str = "") -> bytes:
    """One ustar header and its data."""
    t = tarfile.TarInfo(name)
    t.type, t.size, t.linkname, t.mtime, t.mode = type_, len(data), linkname, 1000, 0o644
    return t.tobuf(format=tarfile.USTAR_FORMAT) + _padded(data)


def pax(**records: bytes) -> bytes:
    """An ``x`` header with ``records`` ("%d key=value\\n", the length counting itself)."""
    body = b""
    for key, value in records.items():
        rest = b" " + key.replace("__", ".").encode() + b"=" + value + b"\n"
        n = len(rest) + 1
        while len(str(n)) + len(rest) != n:
            n += 1
        body += str(n).encode() + rest
    return member("PaxHeaders/x", tarfile.XHDTYPE, body)


def long_name(name: str, type_: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    return member("././@LongLink", type_, name.encode() + b"\0")


def test_a_gnu_long_name_wins_over_the_pax_path(sn) -> None:
    blob = pax(path=b"from_pax") + long_name("from_gnu") + member("short", tarfile.REGTYPE, b"x")
    sn.apply("k", io.BytesIO(blob + END))
    assert os.listdir(upper(sn)) == ["from_gnu"]


def test_a_gnu_long_link_name_wins_over_the_pax_linkpath(sn) -> None:
    blob = (
        pax(linkpath=b"from_pax")
        + long_name("from_gnu", tarfile.GNUTYPE_LONGLINK)
        + member("s", tarfile.SYMTYPE, linkname="short")
    )
    sn.apply("k", io.BytesIO(blob + END))
    assert os.readlink(upper(sn) / "s") == "from_gnu"


def test_empty_pax_values_keep_the_header_fields(sn) -> None:
    blob = pax(path=b"", size=b"", mtime=b"") + member("kept", tarfile.REGTYPE, b"data")
    blob += pax(linkpath=b"") + member("s", tarfile.SYMTYPE, linkname="target")
    sn.apply("k", io.BytesIO(blob + END))
    u = upper(sn)
    assert (u / "kept").read_bytes() == b"data"
    assert os.stat(u / "kept").st_mtime == 1000
    assert os.readlink(u / "s") == "target"


def test_a_pax_linkpath_with_a_nul_is_refused(sn) -> None:
    blob = pax(linkpath=b"/etc\0/passwd") + member("s", tarfile.SYMTYPE, linkname="x")
    with pytest.raises(InvalidArgumentError, match="linkpath with a NUL"):
        sn.apply("k", io.BytesIO(blob + END))
    assert os.listdir(upper(sn)) == []


@pytest.mark.parametrize(
    "atime, expected",
    [
        (b"1800000000.5", 1_800_000_000_500_000_000),  # later than mtime: kept
        (b"1600000000", 1_700_000_000_123_456_789),  # earlier: mtime's
        (None, 1_700_000_000_123_456_789),  # none: mtime's
    ],
)
def test_atime_is_the_later_of_atime_and_mtime(sn, atime, expected) -> None:
    records = {"mtime": b"1700000000.123456789", **({"atime": atime} if atime else {})}
    sn.apply("k", io.BytesIO(pax(**records) + member("f", tarfile.REGTYPE, b"x") + END))
    st = os.stat(upper(sn) / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (expected, 1_700_000_000_123_456_789)


def _sparse_1_0(name: str, fragments: list[tuple[int, bytes]], realsize: int) -> bytes:
    """A PAX GNU sparse 1.0 entry: the map ("count\\n", then "offset\\nsize\\n") before the data."""
    text = f"{len(fragments)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in fragments)
    data = _padded(text.encode()) + b"".join(d for _, d in fragments)
    header = pax(
        GNU__sparse__major=b"1",
        GNU__sparse__minor=b"0",
        GNU__sparse__name=name.encode(),
        GNU__sparse__realsize=str(realsize).encode(),
    )
    return header + member(f"GNUSparseFile.0/{name}", tarfile.REGTYPE, data)


def test_a_sparse_map_over_many_blocks(sn) -> None:
    """A map of 3,000 fragments spans about 40 blocks, its numbers split across them."""
    fragments = [(i * 4096, bytes([65 + i % 26]) * (1 + i % 7)) for i in range(3000)]
    realsize = 3000 * 4096
    sn.apply("k", io.BytesIO(_sparse_1_0("holes", fragments, realsize) + END))
    want = bytearray(realsize)
    for off, d in fragments:
        want[off : off + len(d)] = d
    assert (upper(sn) / "holes").read_bytes() == bytes(want)


def test_a_sparse_map_of_empty_fragments_is_read_in_one_pass(sn) -> None:
    """About 1 MiB of map text: parsing it again per block took ~2.5 s per entry."""
    n = 100_000
    blob = b"".join(_sparse_1_0(f"f{i}", [(0, b"")] * n, 0) for i in range(3))
    sn.apply("k", io.BytesIO(blob + END))
    assert sorted(os.listdir(upper(sn))) == ["f0", "f1", "f2"]


def test_a_corrupt_gzip_stream_is_invalid_argument(sn) -> None:
    c = isal_zlib.compressobj(2, 8, 31)
    data = bytearray(c.compress(tar(file("a", b"abc"))) + c.flush())
    data[-8] ^= 1  # the CRC
    with pytest.raises(InvalidArgumentError, match="gzip layer"):
        sn.apply("k", io.BytesIO(bytes(data)))
    assert os.listdir(upper(sn)) == []


def test_a_symlink_loop_in_a_hard_link_target_is_eloop(sn) -> None:
    blob = tar(symlink("missing/../a", "a"), link("a/x", "h"))
    with pytest.raises(OSError) as e:
        sn.apply("k", io.BytesIO(blob))
    assert e.value.errno == errno.ELOOP


def test_a_fifo_that_stays_open_does_not_hold_a_failed_apply(sn, tmp_path: Path) -> None:
    """The writer never closes: the apply's error comes back, its reader is left behind."""
    fifo = tmp_path / "layer"
    os.mkfifo(fifo)
    opened = threading.Event()
    release = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.write(fd, b"\x01" * 2048)  # not a tar header
        release.wait(60)
        os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    outcome: list[BaseException] = []

    def apply() -> None:
        try:
            sn.apply("k", fifo)
        except BaseException as e:
            outcome.append(e)

    a = threading.Thread(target=apply)
    a.start()
    a.join(30)  # not a timing check: without the fix it waits for release, 60 s
    done = not a.is_alive()
    release.set()
    t.join()
    a.join()
    assert done, "the apply waited for the writer to close the FIFO"
    assert isinstance(outcome[0], InvalidArgumentError)


def test_implied_parents_take_the_lower_xattrs_but_trusted(sn) -> None:
    sn.prepare("base")
    sn.apply("base", io.BytesIO(tar(dir_("usr", 0o750, uid=7))))
    base_usr = upper(sn, "base") / "usr"
    os.setxattr(base_usr, "user.note", b"kept")
    os.setxattr(base_usr, "trusted.note", b"not copied")
    sn.commit("b", "base")
    sn.prepare("top", "b")
    sn.apply("top", io.BytesIO(tar(file("usr/x"))))
    usr = upper(sn, "top") / "usr"
    assert os.getxattr(usr, "user.note") == b"kept"
    assert "trusted.note" not in os.listxattr(usr)
    assert (os.stat(usr).st_mode & 0o7777, os.stat(usr).st_uid) == (0o750, 7)


def test_implied_parents_of_a_rebased_layer_take_the_lower_xattrs(sn) -> None:
    sn.prepare("base")
    sn.apply("base", io.BytesIO(tar(dir_("usr", 0o750))))
    os.setxattr(upper(sn, "base") / "usr", "user.note", b"kept")
    sn.commit("b", "base")
    sn.prepare("top", "")  # parentless, as a parallel unpack's layers
    sn.apply("top", io.BytesIO(tar(file("usr/x"))))
    usr = upper(sn, "top") / "usr"
    assert "user.note" not in os.listxattr(usr)
    sn.commit("t", "top", parent="b")
    assert os.getxattr(upper(sn, "t") / "usr", "user.note") == b"kept"


def test_short_xattr_keys_and_two_byte_names_at_the_end_of_their_buffers(sn) -> None:
    """The prefix checks stop at the NUL (ASan saw memcmp read past both buffers)."""
    name = "d" * 252 + "/.x"  # a GNU long name whose last component is 2 bytes
    blob = pax(SCHILY__xattr__a=b"1") + member("f", tarfile.REGTYPE, b"x")
    blob += long_name(name) + member("short", tarfile.REGTYPE, b"y")
    layer = sn.apply("k", io.BytesIO(blob + END))
    assert layer.entries == 2
    assert (upper(sn) / name).read_bytes() == b"y"


def test_an_empty_file_capability_is_not_applied_so_the_upper_diffs(sn) -> None:
    blob = pax(SCHILY__xattr__security__capability=b"") + member("f", tarfile.REGTYPE, b"x")
    sn.apply("k", io.BytesIO(blob + END))
    assert "security.capability" not in os.listxattr(upper(sn) / "f")
    out = io.BytesIO()
    sn.diff("k", out, compression=None)
    assert tarfile.open(fileobj=io.BytesIO(out.getvalue())).getnames() == ["f"]


def _old_gnu_sparse(name: str, extension_blocks: int) -> bytes:
    """A GNU 'S' header of empty fragments, then extension blocks of 21 more each."""
    h = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.GNU_FORMAT)[:BLOCK])
    h[156:157] = tarfile.GNUTYPE_SPARSE
    h[386:482] = b"00000000000\0" * 8  # 4 fragments: offset 0, size 0
    h[482] = 1  # extension blocks follow
    h[483:495] = b"00000000000\0"  # real size 0
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    ext = bytearray(b"00000000000\0" * 42 + b"\1" + b"\0" * 7)
    last = ext[:504] + b"\0" * 8
    return bytes(h) + bytes(ext) * (extension_blocks - 1) + bytes(last)


def test_old_gnu_sparse_maps_are_bounded(sn) -> None:
    """Extension blocks carry no size: without a bound, memory grew with the stream."""
    sn.apply("k", io.BytesIO(_old_gnu_sparse("small", 3) + END))
    assert (upper(sn) / "small").read_bytes() == b""
    blocks = (1 << 18) // 21 + 1  # one fragment past 262,144
    with pytest.raises(InvalidArgumentError, match="more than 262144 fragments"):
        sn.apply("k", io.BytesIO(_old_gnu_sparse("big", blocks) + END))
    assert not (upper(sn) / "big").exists()


def test_an_applier_that_failed_refuses_more_and_keeps_no_fd(tmp_path: Path) -> None:
    """The sparse file the error cut short was left open, and the next entry reused the slot."""
    bad = pax(GNU__sparse__realsize=b"100", GNU__sparse__map=b"0,5")
    bad += member("sparse", tarfile.REGTYPE, b"abc")  # the map says 5 bytes, there are 3
    before = len(os.listdir("/proc/self/fd"))
    a = fsops.Applier(tmp_path)
    with pytest.raises(fsops.TarError, match="do not add up"):
        a.feed(bad)
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the root's fd only
    for call in (lambda: a.feed(member("next", tarfile.REGTYPE, b"x") + END), a.finish):
        with pytest.raises(ValueError, match="applier failed"):
            call()
    a.close()
    assert len(os.listdir("/proc/self/fd")) == before


def _with_xattrs(path: Path, count: int) -> None:
    path.write_bytes(b"x")
    for i in range(count):
        os.setxattr(path, f"user.k{i}", bytes([i]) * 60000)


def test_a_diff_writes_no_extended_header_an_apply_would_refuse(tmp_path: Path, mounted) -> None:
    """tmpfs takes 1.2 MB of user xattrs on one file; no reader takes a PAX header over 1 MiB."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in (src, dst):
        d.mkdir()
        mounted("tmpfs", "tmpfs", d)
    _with_xattrs(src / "f", 15)  # 900 kB: still a layer
    out = io.BytesIO()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsops.write_tar(fd, out.write)
        _with_xattrs(src / "f", 20)
        with pytest.raises(fsops.UpperError, match=r"'f': its extended header.* larger than 1 MiB"):
            fsops.write_tar(fd, io.BytesIO().write)
    finally:
        os.close(fd)
    a = fsops.Applier(dst)
    a.feed(out.getvalue())
    a.finish()
    a.close()
    assert os.getxattr(dst / "f", "user.k14") == b"\x0e" * 60000


_SWAP_FILE_AND_FIFO = """
import os, sys, threading, time
from snapcore import fsops
top = sys.argv[1]
up = top + "/up"
os.mkdir(up)
open(up + "/f", "wb").write(b"data")
def swap():
    i = 0
    while True:
        os.mkfifo(f"{top}/p{i}")
        os.rename(f"{top}/p{i}", up + "/f")
        open(f"{top}/r{i}", "wb").write(b"data")
        os.rename(f"{top}/r{i}", up + "/f")
        i += 1
threading.Thread(target=swap, daemon=True).start()
fd = os.open(up, os.O_RDONLY | os.O_DIRECTORY)
replaced = 0
# a hit every 0.05-0.7 s here (20 took 1.3-15 s), and one run in ~15 of 3 s had
# none: stop at 5 hits, or at 30 s
end = time.monotonic() + 30
while time.monotonic() < end and replaced < 5:
    try:
        fsops.write_tar(fd, lambda piece: None)
    except fsops.UpperError as e:
        assert "replaced while the layer was written" in str(e), e
        replaced += 1
print(replaced)
"""


def test_a_file_swapped_for_a_fifo_while_diffed_neither_hangs_nor_mixes(tmp_path: Path) -> None:
    """The open after fstatat blocked on a fifo forever; now it cannot, and an inode other
    than the one stat'ed (the fifo, or a new file) is refused, not read under the old header."""
    run = subprocess.run(
        [sys.executable, "-c", _SWAP_FILE_AND_FIFO, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 0  # the race was hit, not missed


_DEEP_TAR = """
import os, resource, sys
from snapcore import fsops
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
with open(sys.argv[2], "wb") as out:
    print(fsops.write_tar(fd, out.write))
"""


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    remove_tree(str(tmp_path))  # pytest's own cleanup recurses once per level


def test_a_tree_deeper_than_the_fd_limit_is_written(deep_tmp: Path) -> None:
    """The walk held one fd per level and failed with EMFILE past the limit (1024 by
    default); it now keeps 64 open and reopens the levels above through ".."."""
    up = deep_tmp / "up"
    make_chain(up, 1000, files={0: ("top", b"t"), 500: ("middle", b"m"), 1000: ("bottom", b"b")})
    out = deep_tmp / "layer.tar"
    run = subprocess.run(
        [sys.executable, "-c", _DEEP_TAR, str(up), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == 1003
    with tarfile.open(out) as t:
        names = t.getnames()
    dirs = ["/".join(["d"] * i) for i in range(1, 1001)]
    middle = "/".join(["d"] * 500) + "/middle"
    # sorted walk: each directory before its contents, "bottom" < "d" < "middle"
    assert names == [*dirs[:500], *dirs[500:], dirs[-1] + "/bottom", middle, "top"]


def test_a_directory_moved_out_from_under_a_deep_walk_is_refused(deep_tmp: Path) -> None:
    """A level whose fd was closed is reopened through "..", and only if it is the same
    directory: one moved meanwhile is an UpperError, never a walk of another directory."""
    up = deep_tmp / "up"
    # the sink is first called while the walk is in the file at the bottom
    make_chain(up, 150, files={150: ("f", os.urandom(3 << 20))})
    moved: list[bool] = []

    def sink(piece: memoryview) -> None:
        if not moved:
            os.rename(up / "/".join(["d"] * 50), up / "moved")  # a level the walk has closed
            moved.append(True)

    fd = os.open(up, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(fsops.UpperError, match="moved while the layer was written"):
            fsops.write_tar(fd, sink)
    finally:
        os.close(fd)
    assert moved


# Holds a write lease on argv[1]; on the break (SIGIO) says so and lets go once told to.
_LEASE_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
signal.signal(signal.SIGIO, lambda *_: print("breaking", flush=True))
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
print("released", flush=True)
sys.stdin.readline()
"""


def _in_openat(tid: int) -> bool:
    """Whether the thread ``tid`` of this process is blocked in openat (syscall 257)."""
    return Path(f"/proc/self/task/{tid}/syscall").read_text().split()[0] == "257"


def test_a_file_under_a_write_lease_is_written_once_the_holder_lets_go(tmp_path: Path) -> None:
    """The O_NONBLOCK open (kept so that a fifo swapped in never blocks) failed with
    EWOULDBLOCK on a file another process holds a write lease on; the walk now waits for the
    holder, as tar does, and a signal meanwhile (EINTR) only resumes the wait."""
    up = tmp_path / "up"
    up.mkdir()
    (up / "f").write_bytes(b"leased")
    holder = subprocess.Popen(
        [sys.executable, "-c", _LEASE_HOLDER, str(up / "f")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    out = io.BytesIO()
    result: list[BaseException | int] = []
    signalled: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, _: signalled.append(signum))
    try:
        assert holder.stdout.readline() == "held\n"
        fd = os.open(up, os.O_RDONLY | os.O_DIRECTORY)

        def diff() -> None:
            try:
                result.append(fsops.write_tar(fd, out.write))
            except BaseException as e:  # checked below
                result.append(e)

        walker = threading.Thread(target=diff)
        walker.start()
        assert holder.stdout.readline() == "breaking\n"
        deadline = time.monotonic() + 10
        while walker.is_alive() and not _in_openat(walker.native_id or 0):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert walker.ident is not None
        signal.pthread_kill(walker.ident, signal.SIGUSR1)  # Python's handler: no SA_RESTART
        time.sleep(0.2)
        assert walker.is_alive() and _in_openat(walker.native_id or 0), result
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        walker.join(10)
        os.close(fd)
    finally:
        signal.signal(signal.SIGUSR1, old)
        holder.kill()
        holder.wait()
    assert result == [1], result
    assert signalled == [signal.SIGUSR1]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        member = t.extractfile("f")
        assert member is not None and member.read() == b"leased"
