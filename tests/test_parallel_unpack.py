"""The parallel unpack makes the sequential unpack's tree; implied parents take their lowers'
metadata at commit(parent=); a failure stops the other layers and leaves no extract key."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pysnap
from pysnap import blobstore
from pysnap.cli import main
from pysnap.errors import InvalidArgumentError, NotFoundError
from pysnap.images import unpack
from pysnap.images.admission import Admission
from pysnap.images.oci import chain_ids
from tests.image_util import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Layout, sha, tree

# The module (pysnap.images.unpack is the function).
unpack_module = importlib.import_module("pysnap.images.unpack")
# Parents no lower has get default metadata and the time of their making: not compared.
_FRESH = {"link", "new", "new/sub", "opt/x", "plain", "usr/lib"}


def _tar(*entries: tuple[str, str, int, int, int, int]) -> bytes:
    """A layer of (name, type "d"/"f"/"l:target", mode, uid, gid, mtime), in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, uid, gid, mtime in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
            data = b""
            if kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind.startswith("l:"):
                ti.type, ti.linkname = tarfile.SYMTYPE, kind[2:]
            else:
                data = name.encode()
                ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _layers() -> list[bytes]:
    base = _tar(
        ("usr", "d", 0o750, 7, 8, 1000),
        ("usr/bin", "d", 0o711, 9, 10, 2000),
        ("usr/bin/a", "f", 0o755, 0, 0, 2100),
        ("opt", "d", 0o700, 3, 4, 3000),
        ("link", "l:usr", 0o777, 0, 0, 3100),
        ("plain", "f", 0o644, 0, 0, 3200),
    )
    # no directory entries: usr, usr/bin, opt come from the base; opt/x, new, new/sub from none
    middle = _tar(
        ("usr/bin/b", "f", 0o644, 1, 1, 4000),
        ("opt/x/y", "f", 0o600, 2, 2, 4100),
        ("new/sub/f", "f", 0o644, 0, 0, 4200),
        ("link/c", "f", 0o644, 0, 0, 4300),  # through the layer's own lookup: link is absent
    )
    # usr/bin implied again (its first lower is the middle layer's implied one); usr made
    # implicitly, then given an entry of its own; plain a file below
    top = _tar(
        ("usr/bin/d", "f", 0o644, 0, 0, 5000),
        ("usr/lib/z", "f", 0o644, 0, 0, 5100),
        ("usr", "d", 0o755, 11, 12, 5200),
        ("plain/q", "f", 0o644, 0, 0, 5300),
    )
    return [base, middle, top]


def _image(tmp_path: Path, layers: list[bytes]) -> Path:
    lay = Layout(tmp_path / "oci")
    lay.index([lay.image(layers)])
    return lay.path


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[pysnap.OverlaySnapshotter, pysnap.OverlaySnapshotter]]:
    with (
        pysnap.OverlaySnapshotter(tmp_path / "seq") as seq,
        pysnap.OverlaySnapshotter(tmp_path / "par") as par,
    ):
        yield seq, par


def _view(sn: pysnap.OverlaySnapshotter, name: str) -> dict[str, tuple[object, ...]]:
    """tree() of a view of ``name``, with every directory's mtime but those of _FRESH."""
    with pysnap.mounted(sn.view("check", name)) as path:
        found = tree(Path(path))
        for rel in found:
            full = os.path.join(path, rel)
            if os.path.isdir(full) and not os.path.islink(full) and rel not in _FRESH:
                found[rel] = (*found[rel], os.lstat(full).st_mtime_ns)
    sn.remove("check")
    return found


def test_parallel_unpack_makes_the_sequential_tree(
    roots: tuple[pysnap.OverlaySnapshotter, pysnap.OverlaySnapshotter], tmp_path: Path
) -> None:
    seq, par = roots
    layout = _image(tmp_path, _layers())
    one = unpack(seq, layout, parallel=False)
    other = unpack(par, layout, parallel=True)
    assert one == other
    for i in range(1, 4):  # every layer of the chain, not only the top
        assert _view(seq, one.chain_ids[i - 1]) == _view(par, one.chain_ids[i - 1])
    got = _view(par, other.top)
    assert got["usr"][:3] == (0o40755, 11, 12)  # its own entry won over the implied one
    assert got["usr/bin"][:3] == (0o40711, 9, 10) and got["usr/bin"][-1] == 2000 * 10**9
    assert got["opt"][:3] == (0o40700, 3, 4) and got["opt"][-1] == 3000 * 10**9
    assert got["new/sub"][:3] == (0o40755, 0, 0)  # no lower has it: defaults
    assert [(i.name, i.parent) for i in sorted(par.walk(), key=lambda i: i.name)] == [
        (i.name, i.parent) for i in sorted(seq.walk(), key=lambda i: i.name)
    ]
    assert not os.path.exists(os.path.join(par.root, "snapshots", "1", "implied"))


def test_commit_with_parent_gives_implied_dirs_the_lower_metadata(tmp_path: Path) -> None:
    with pysnap.OverlaySnapshotter(tmp_path / "root") as sn:
        base, up = _layers()[:2]
        sn.prepare("b", "")
        sn.apply("b", io.BytesIO(base))
        sn.commit("base", "b")
        sn.prepare("k", "")
        sn.apply("k", io.BytesIO(up))
        upper = tmp_path / "root" / "snapshots" / "2" / "fs"
        before = os.lstat(upper / "usr" / "bin")
        assert (before.st_mode & 0o7777, before.st_uid) == (0o755, 0)  # no lowers: defaults
        # A refused commit changes nothing
        with pytest.raises(NotFoundError):
            sn.commit("top", "k", parent="missing")
        assert os.lstat(upper / "usr" / "bin").st_mode == before.st_mode
        sn.commit("top", "k", parent="base")
        st = os.lstat(upper / "usr" / "bin")
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns) == (
            0o711,
            9,
            10,
            2000 * 10**9,
        )
        assert sn.stat("top").parent == "base"


def test_failed_layer_leaves_no_extract_key(tmp_path: Path) -> None:
    layers = _layers()
    layout = _image(tmp_path, layers)
    chains = chain_ids([sha(t) for t in layers])
    bad = layout / "blobs" / "sha256" / sha(gzip.compress(layers[1], mtime=0))[7:]
    data = bytearray(bad.read_bytes())
    data[-5] ^= 1  # the gzip trailer's size field: another digest
    bad.write_bytes(data)
    with pysnap.OverlaySnapshotter(tmp_path / "root") as sn:
        with pytest.raises(InvalidArgumentError, match=r"layer 1 .*digest mismatch"):
            unpack(sn, layout, parallel=True)
        # layer 0 is committed if its apply ended before layer 1 failed, else stopped
        names = [i.name for i in sn.walk()]
        assert names in ([], [chains[0]])
        assert len(os.listdir(tmp_path / "root" / "snapshots")) == len(names)
        assert not os.listdir(tmp_path / "root" / "blobs" / "ingest")


def _big_layer(lay: Layout, size: int) -> dict[str, object]:
    """An uncompressed layer (its digest is its diff ID) of one file of ``size`` zero bytes,
    its blob sparse on disk; its descriptor."""
    head = tarfile.TarInfo("big")
    head.size, head.mode = size, 0o644
    header = head.tobuf(tarfile.PAX_FORMAT)
    path = lay.path / "blobs" / "building"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + size + -size % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    size = os.stat(path).st_size
    os.rename(path, lay.path / "blobs" / "sha256" / digest[7:])
    return {"mediaType": OCI_LAYER, "digest": digest, "size": size}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: layers apply in turn")
@pytest.mark.parametrize("bad", [0, 1], ids=["below", "above"])
def test_failed_layer_stops_the_others_at_once(
    tmp_path: Path, bad: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer that fails at its first bytes stops a 256 MiB layer's apply, below or above it:
    its blob is never kept, nothing is committed, no extract key is left."""
    # Both layers run at once: the second is admitted 10 ms in, as if cores were idle.
    monkeypatch.setattr(unpack_module, "Admission", lambda cores: Admission(64, window=0.01))
    lay = Layout(tmp_path / "oci")
    big = _big_layer(lay, 256 << 20)
    junk = bytes(range(256)) * 4  # not a tar header
    descs = [big, lay.blob(junk, OCI_LAYER)]
    diff_ids = [big["digest"], sha(b"never read")]
    if bad == 0:
        descs.reverse()
        diff_ids.reverse()
    config = {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {"schemaVersion": 2, "config": lay.doc(config, OCI_CONFIG), "layers": descs}
    lay.index([lay.doc(manifest, OCI_MANIFEST)])
    with pysnap.OverlaySnapshotter(tmp_path / "root") as sn:
        with pytest.raises(InvalidArgumentError, match="invalid layer"):  # not the stopped one's
            unpack(sn, lay.path, platform="linux/amd64", parallel=True)
        assert sn.walk() == []
        assert not os.listdir(tmp_path / "root" / "snapshots")
        assert not os.listdir(tmp_path / "root" / "blobs" / "ingest")
        assert not os.path.exists(blobstore.blob_path(sn.root, str(big["digest"])))


def test_cli_sequential_flag_makes_the_same_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _image(tmp_path, _layers())
    tops = []
    for name, flags in (("seq", ["--sequential"]), ("par", [])):
        root = str(tmp_path / name)
        assert main(["--root", root, "--json", "image", "unpack", str(layout), *flags]) == 0
        tops.append(json.loads(capsys.readouterr().out)["top"])
    assert tops[0] == tops[1]
    with (
        pysnap.OverlaySnapshotter(tmp_path / "seq") as seq,
        pysnap.OverlaySnapshotter(tmp_path / "par") as par,
    ):
        assert _view(seq, tops[0]) == _view(par, tops[1])
