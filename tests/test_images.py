"""Unpacking images into snapshots and exporting them, checked with real clients.

The image is built offline with umoci from busybox-static; a mounted view of
the top chain ID is compared with ``umoci unpack``'s rootfs; exports are read
back by umoci (``umoci ls``, ``umoci stat``, ``umoci unpack``) and by pysnap.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from image_util import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Layout,
    docker_archive,
    layer_tar,
    sha,
    tar_of,
    tree,
    umoci,
    umoci_busybox,
)

import pysnap
from pysnap import blobstore
from pysnap.cli import main
from pysnap.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pysnap.images import Image, chain_ids, export, unpack
from pysnap.images.unpack import (
    DIFF_ID_LABEL,
    OWNER_LABEL,
    PARENT_CHAIN_LABEL,
    REF_LABEL,
)

if TYPE_CHECKING:
    from containerd_env import ContainerdEnv

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("umoci") is None, reason="needs umoci (apt-get install umoci)"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/busybox"), reason="needs busybox-static"),
]


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """The umoci-built image: (layout, tag, umoci's own rootfs of it)."""
    work = tmp_path_factory.mktemp("busybox")
    layout, tag = umoci_busybox(work)
    umoci("unpack", "--image", f"{layout}:{tag}", str(work / "reference"))
    return layout, tag, work / "reference" / "rootfs"


@pytest.fixture
def sn(tmp_path: Path) -> Iterator[pysnap.OverlaySnapshotter]:
    with pysnap.OverlaySnapshotter(tmp_path / "root") as s:
        yield s


def _manifest(layout: Path) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return dict(json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes()))


def _view_tree(sn: pysnap.OverlaySnapshotter, name: str, key: str = "check") -> dict[str, object]:
    with pysnap.mounted(sn.view(key, name)) as path:
        found = tree(Path(path))
    sn.remove(key)
    return dict(found)


def _contents(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def _extract_keys(sn: pysnap.OverlaySnapshotter) -> list[str]:
    return [i.name for i in sn.walk("name~=^extract-")]


def test_unpack_equals_umoci_unpack(
    sn: pysnap.OverlaySnapshotter, busybox: tuple[Path, str, Path]
) -> None:
    layout, _, reference = busybox
    image = unpack(sn, layout)
    manifest = _manifest(layout)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert (
        image.manifest_digest
        == json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    )
    assert image.chain_ids == tuple(chain_ids(image.diff_ids))
    assert image.top == image.chain_ids[-1]
    assert [layer.digest for layer in image.layers] == [d["digest"] for d in layers]
    assert [layer.diff_id for layer in image.layers] == list(image.diff_ids)
    assert all(layer.entries > 0 for layer in image.layers)
    assert _view_tree(sn, image.top) == tree(reference)
    for i, chain in enumerate(image.chain_ids):
        info = sn.stat(chain)
        assert info.kind == pysnap.Kind.COMMITTED
        assert info.parent == (image.chain_ids[i - 1] if i else "")
        assert info.labels[REF_LABEL] == chain
        assert info.labels[DIFF_ID_LABEL] == image.diff_ids[i]
        assert info.labels.get(PARENT_CHAIN_LABEL, "") == info.parent
        assert info.labels[blobstore.BLOB_DIGEST_LABEL] == layers[i]["digest"]
        assert info.labels[blobstore.BLOB_MEDIA_TYPE_LABEL] == layers[i]["mediaType"]
        assert info.labels[blobstore.BLOB_SIZE_LABEL] == str(layers[i]["size"])
        assert OWNER_LABEL not in info.labels
        blob = Path(blobstore.blob_path(sn.root, layers[i]["digest"]))
        assert sha(blob.read_bytes()) == layers[i]["digest"]
    assert _extract_keys(sn) == []
    sn.cleanup()  # the blobs are referenced: kept
    assert all(os.path.exists(blobstore.blob_path(sn.root, d["digest"])) for d in layers)


def test_unpack_twice_reuses_every_snapshot(
    sn: pysnap.OverlaySnapshotter, busybox: tuple[Path, str, Path], tmp_path: Path
) -> None:
    layout, tag, _ = busybox
    first = unpack(sn, layout, ref=tag)
    before = {i.name: i.created_ns for i in sn.walk()}
    again = unpack(sn, tar_of(layout, tmp_path / "oci.tar"))  # the same image from a tar
    assert again == first
    assert {i.name: i.created_ns for i in sn.walk()} == before


def test_docker_archive_shares_the_chain(
    sn: pysnap.OverlaySnapshotter, busybox: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """A docker save archive of the same layers (uncompressed) reuses the OCI image's snapshots."""
    layout, _, reference = busybox
    tars = [
        gzip.decompress((layout / "blobs" / "sha256" / d["digest"][7:]).read_bytes())
        for d in _manifest(layout)["layers"]  # type: ignore[attr-defined]
    ]
    arc = docker_archive(tmp_path / "d.tar", [(["busybox:latest"], tars)])
    fresh = unpack(sn, arc, ref="busybox")
    assert fresh.manifest_digest == ""
    assert [layer.digest for layer in fresh.layers] == [sha(t) for t in tars]
    assert fresh.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"
    assert _view_tree(sn, fresh.top) == tree(reference)
    oci = unpack(sn, layout)
    assert oci.chain_ids == fresh.chain_ids


def test_failed_layer_leaves_nothing_of_it(sn: pysnap.OverlaySnapshotter, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    a, b = layer_tar({"a": b"1"}), layer_tar({"b": b"2"})
    lay.index([lay.image([a, b])])
    chains = chain_ids([sha(a), sha(b)])
    path = next(
        p
        for p in (lay.path / "blobs" / "sha256").iterdir()
        if p.read_bytes() == gzip.compress(b, mtime=0)
    )
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # the gzip trailer's size field: same length, another digest
    path.write_bytes(data)
    with pytest.raises(InvalidArgumentError, match=rf"layer 1 sha256:{path.name}: digest mismatch"):
        unpack(sn, lay.path, platform="linux/amd64", parallel=False)
    assert [i.name for i in sn.walk()] == [chains[0]]  # layer 0 stays, right as it is
    assert not os.listdir(os.path.join(sn.root, "blobs", "ingest"))
    assert os.path.exists(blobstore.blob_path(sn.root, "sha256:" + path.name)) is False


def test_sha512_layers_are_verified(sn: pysnap.OverlaySnapshotter, tmp_path: Path) -> None:
    """A descriptor naming sha512 (the apply hashes sha256): the blob reader checks it."""
    lay = Layout(tmp_path / "oci")
    a, b = layer_tar({"a": b"1"}), layer_tar({"b": b"2"})
    descs = []
    for t in (a, b):
        blob = gzip.compress(t, mtime=0)
        digest = "sha512:" + hashlib.sha512(blob).hexdigest()
        (lay.path / "blobs" / "sha512").mkdir(exist_ok=True)
        (lay.path / "blobs" / "sha512" / digest[7:]).write_bytes(blob)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(blob)})
    config = {"os": "linux", "architecture": "amd64"}
    config["rootfs"] = {"type": "layers", "diff_ids": [sha(a), sha(b)]}
    manifest = {"schemaVersion": 2, "config": lay.doc(config, OCI_CONFIG), "layers": descs}
    lay.index([lay.doc(manifest, OCI_MANIFEST)])
    image = unpack(sn, lay.path, platform="linux/amd64")
    assert [layer.digest for layer in image.layers] == [d["digest"] for d in descs]
    assert _view_tree(sn, image.top)["b"]
    # exported as a tar, the kept sha512 blobs' 128-character names need PAX headers
    export(sn, image.top, tmp_path / "out.tar")
    with pysnap.OverlaySnapshotter(tmp_path / "again") as again:
        assert unpack(again, tmp_path / "out.tar").layers[1].digest == descs[1]["digest"]
    path = lay.path / "blobs" / "sha512" / str(descs[1]["digest"])[7:]
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # the gzip trailer's size field: same length, another digest
    path.write_bytes(data)
    with (
        pysnap.OverlaySnapshotter(tmp_path / "other") as other,
        pytest.raises(InvalidArgumentError, match=r"layer 1 sha512:\w+: digest mismatch"),
    ):
        unpack(other, lay.path, platform="linux/amd64")


def test_wrong_diff_id_is_refused(sn: pysnap.OverlaySnapshotter, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    a = layer_tar({"a": b"1"})
    config = lay.doc(
        {
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": [sha(b"other")]},
        },
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = {
        "schemaVersion": 2,
        "config": config,
        "layers": [lay.blob(gzip.compress(a), "application/vnd.oci.image.layer.v1.tar+gzip")],
    }
    lay.index([lay.doc(manifest, "application/vnd.oci.image.manifest.v1+json")])
    blob = manifest["layers"][0]["digest"]  # type: ignore[index]
    with pytest.raises(InvalidArgumentError, match=rf"^layer 0 {blob}: .*diff ID") as e:
        unpack(sn, lay.path, platform="linux/amd64")
    assert "emptied again" in " ".join(e.value.__notes__)  # the apply's notes are kept
    assert sn.walk() == []


def test_killed_unpack_is_cleaned_up_by_the_next(
    sn: pysnap.OverlaySnapshotter, busybox: tuple[Path, str, Path]
) -> None:
    """SIGKILL an unpack after its first apply, before its commit: the next unpack cleans up."""
    layout, _, reference = busybox
    child = subprocess.Popen(
        [sys.executable, "-c", _STALL_AFTER_APPLY, sn.root, str(layout)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "applied\n"
        left = _extract_keys(sn)  # one per layer to apply: a parallel unpack prepares all
        assert left
    finally:
        child.kill()
        child.wait()
    for key in left:
        stale = sn.stat(key)
        assert stale.labels[OWNER_LABEL].split(".")[1] == str(child.pid)
        chain = key.split(" ")[1]  # "extract-<unique> <chainID>"
        assert stale.labels[REF_LABEL] == chain and DIFF_ID_LABEL in stale.labels  # the prepare's
        assert stale.labels[blobstore.BLOB_DIGEST_LABEL].startswith("sha256:")
    image = unpack(sn, layout)
    assert _extract_keys(sn) == []
    assert _view_tree(sn, image.top) == tree(reference)
    sn.cleanup()  # the killed copy of the blob goes too
    assert os.listdir(os.path.join(sn.root, "blobs", "ingest")) == []


# The child: a real unpack whose first apply, once done, reports and waits to be killed.
_STALL_AFTER_APPLY = """
import sys, time
import pysnap
from pysnap.images import unpack
real = pysnap.OverlaySnapshotter.apply
def apply(self, *args, **kwargs):
    layer = real(self, *args, **kwargs)
    print("applied", flush=True)
    time.sleep(600)
pysnap.OverlaySnapshotter.apply = apply
with pysnap.OverlaySnapshotter(sys.argv[1]) as sn:
    unpack(sn, sys.argv[2])
"""


def _two_images_sharing_a_base(tmp_path: Path) -> tuple[Path, Path, str]:
    base = layer_tar({f"base/{n}": os.urandom(2000) for n in range(200)})
    one, two = Layout(tmp_path / "one"), Layout(tmp_path / "two")
    one.index([one.image([base, layer_tar({"one": b"1"})])])
    two.index([two.image([base, layer_tar({"two": b"2"})])])
    return one.path, two.path, sha(base)


def test_concurrent_unpacks_share_a_base_threads(
    sn: pysnap.OverlaySnapshotter, tmp_path: Path
) -> None:
    one, two, base = _two_images_sharing_a_base(tmp_path)
    start = threading.Barrier(2)
    results: dict[int, Image | BaseException] = {}

    def run(n: int, source: Path) -> None:
        start.wait()
        try:
            results[n] = unpack(sn, source, platform="linux/amd64")
        except BaseException as e:  # reported below
            results[n] = e

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in enumerate((one, two))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    images = [results[0], results[1]]
    assert all(isinstance(i, Image) for i in images), images
    assert images[0].chain_ids[0] == images[1].chain_ids[0] == base  # type: ignore[union-attr]
    names = sorted(i.name for i in sn.walk())
    assert names == sorted({*images[0].chain_ids, *images[1].chain_ids})  # type: ignore[union-attr]


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_an_adopting_unpack_reuses_a_base_committed_meanwhile(
    tmp_path: Path, parallel: bool
) -> None:
    """With adopt_layers, prepare refuses a key whose ref a committed layer has: reused."""
    one, two, base = _two_images_sharing_a_base(tmp_path)
    module = importlib.import_module("pysnap.images.unpack")
    real = module._existing
    raced: dict[str, Image | None] = {}

    def existing(sn: pysnap.OverlaySnapshotter, chain: str, parent: str) -> object:
        if "one" in raced:
            return real(sn, chain, parent)
        raced["one"] = None  # between this look-up and the prepare, another unpack commits
        raced["one"] = unpack(sn, one, platform="linux/amd64")
        return None

    with (
        pysnap.OverlaySnapshotter(tmp_path / "root", adopt_layers=True) as sn,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(module, "_existing", existing)
        image = unpack(sn, two, platform="linux/amd64", parallel=parallel)
        other = raced["one"]
        assert other is not None and image.chain_ids[0] == other.chain_ids[0] == base
        assert sorted(i.name for i in sn.walk()) == sorted({*image.chain_ids, *other.chain_ids})


def test_concurrent_unpacks_share_a_base_processes(
    sn: pysnap.OverlaySnapshotter, tmp_path: Path
) -> None:
    one, two, base = _two_images_sharing_a_base(tmp_path)
    code = (
        "import sys, pysnap; from pysnap.images import unpack\n"
        "with pysnap.OverlaySnapshotter(sys.argv[1]) as sn:\n"
        "    print(unpack(sn, sys.argv[2], platform='linux/amd64').top)\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, sn.root, str(s)], stdout=subprocess.PIPE, text=True
        )
        for s in (one, two)
    ]
    tops = [c.communicate(timeout=120)[0].strip() for c in children]
    assert [c.returncode for c in children] == [0, 0]
    infos = {i.name: i for i in sn.walk()}
    assert len(infos) == 3 and base in infos and set(tops) <= set(infos)
    assert _extract_keys(sn) == []


# -- export -------------------------------------------------------------------------


@pytest.fixture
def app(sn: pysnap.OverlaySnapshotter, busybox: tuple[Path, str, Path]) -> Image:
    """The busybox image plus a layer written on pysnap (/hello.txt), committed as "app"."""
    image = unpack(sn, busybox[0])
    with pysnap.mounted(sn.prepare("build", image.top)) as root:
        Path(root, "hello.txt").write_text("made on pysnap\n")
    sn.commit("app", "build")
    return image


def test_export_reuses_the_source_blobs(
    sn: pysnap.OverlaySnapshotter, app: Image, busybox: tuple[Path, str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    export(
        sn, "app", dest, ref="example.com/pysnap/app:1", config={"Cmd": ["/bin/cat", "/hello.txt"]}
    )
    manifest = _manifest(dest)
    source = _manifest(busybox[0])
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert [d["digest"] for d in layers[:2]] == [d["digest"] for d in source["layers"]]  # type: ignore[attr-defined]
    assert len(layers) == 3
    config = json.loads((dest / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())  # type: ignore[index]
    assert config["rootfs"]["diff_ids"][:2] == list(app.diff_ids)
    assert chain_ids(config["rootfs"]["diff_ids"])[1] == app.top
    assert len(config["history"]) == 3 and "created" not in config
    assert config["config"] == {"Cmd": ["/bin/cat", "/hello.txt"]}
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "example.com/pysnap/app:1",
        "io.containerd.image.name": "example.com/pysnap/app:1",
    }
    # umoci's own parsing
    listed = subprocess.run(
        ["umoci", "ls", "--layout", str(dest)], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == ["example.com/pysnap/app:1"]
    stat = subprocess.run(
        ["umoci", "stat", "--json", "--image", f"{dest}:example.com/pysnap/app:1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(json.loads(stat.stdout)["history"]) == 3
    # and back: umoci unpack's rootfs of the export equals a view of "app"
    umoci("unpack", "--image", f"{dest}:example.com/pysnap/app:1", str(tmp_path / "bundle"))
    assert tree(tmp_path / "bundle" / "rootfs") == _view_tree(sn, "app")


def test_export_is_byte_identical(
    sn: pysnap.OverlaySnapshotter, app: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export(sn, "app", tmp_path / "a.tar", ref="x:1")
    export(sn, "app", tmp_path / "b.tar", ref="x:1")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    stream = io.BytesIO()
    export(sn, "app", stream, ref="x:1")
    assert stream.getvalue() == (tmp_path / "a.tar").read_bytes()
    export(sn, "app", tmp_path / "d1")
    export(sn, "app", tmp_path / "d2")
    assert _contents(tmp_path / "d1") == _contents(tmp_path / "d2")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    export(sn, "app", tmp_path / "c.tar")
    fresh = tmp_path / "c"
    fresh.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "c.tar"), "-C", str(fresh)], check=True)
    config = json.loads(
        (fresh / "blobs" / "sha256" / _manifest(fresh)["config"]["digest"][7:]).read_bytes()
    )  # type: ignore[index]
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in config["history"]} == {"2023-11-14T22:13:20Z"}
    # the tar is a layout pysnap reads back: the made-on-pysnap layer's diff ID is kept
    with pysnap.OverlaySnapshotter(tmp_path / "root2") as other:
        again = unpack(other, tmp_path / "c.tar")
        assert again.diff_ids == tuple(config["rootfs"]["diff_ids"])
        assert _view_tree(other, again.top) == _view_tree(sn, "app")


def test_export_refuses_bad_input(
    sn: pysnap.OverlaySnapshotter, app: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sn.prepare("active", "app")
    with pytest.raises(FailedPreconditionError, match="not committed"):
        export(sn, "active", tmp_path / "o")
    with pytest.raises(NotFoundError):
        export(sn, "nope", tmp_path / "o")
    with pytest.raises(InvalidArgumentError, match="'Bogus'"):
        export(sn, "app", tmp_path / "o", config={"Bogus": 1})
    with pytest.raises(InvalidArgumentError, match="'Cmd' must be a list"):
        export(sn, "app", tmp_path / "o", config={"Cmd": "sh"})
    with pytest.raises(InvalidArgumentError, match="'Labels' must be a dict of strings"):
        export(sn, "app", tmp_path / "o", config={"Labels": {"a": 1}})
    with pytest.raises(InvalidArgumentError, match="compression"):
        export(sn, "app", tmp_path / "o", compression="lz4")
    (tmp_path / "file").write_text("")
    with pytest.raises(AlreadyExistsError, match="not a directory"):
        export(sn, "app", tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(AlreadyExistsError):
        export(sn, "app", tmp_path / "full")
    for bad in ("yesterday", "99999999999999"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(InvalidArgumentError, match="SOURCE_DATE_EPOCH"):
            export(sn, "app", tmp_path / "o")
    assert sorted(os.listdir(tmp_path)) == ["file", "full", "root"]  # nothing half-written


def test_cli_unpack_and_export(
    busybox: tuple[Path, str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    root = str(tmp_path / "root")
    assert (
        main(["--root", root, "--json", "image", "unpack", str(busybox[0]), "--ref", busybox[1]])
        == 0
    )
    doc = json.loads(capsysbinary.readouterr().out)
    assert len(doc["layers"]) == 2 and doc["top"] == doc["layers"][-1]["chain_id"]
    config = tmp_path / "config.json"
    config.write_text('{"Cmd": ["/bin/sh"]}')
    dest = tmp_path / "out.tar"
    export_to = ["--root", root, "image", "export", "--config", str(config), "--ref", "a:1"]
    assert main([*export_to, doc["top"], str(dest)]) == 0
    assert b"manifest sha256:" in capsysbinary.readouterr().out
    # "-": the tar on stdout, as ctr images export writes it; the report on stderr
    assert main([*export_to, doc["top"], "-"]) == 0
    out = capsysbinary.readouterr()
    assert out.out == dest.read_bytes() and b"-: manifest sha256:" in out.err
    assert not (tmp_path / "-").exists()
    assert (
        main(["--root", root, "image", "unpack", str(tmp_path / "nope")]) == NotFoundError.exit_code
    )
    nowhere = ["--root", str(tmp_path / "none"), "image", "export", "x", str(tmp_path / "o")]
    assert main(nowhere) == NotFoundError.exit_code
    assert not (tmp_path / "none").exists()  # export never makes a root
    config.write_text("{")
    assert (
        main(
            [
                "--root",
                root,
                "image",
                "export",
                doc["top"],
                str(tmp_path / "o"),
                "--config",
                str(config),
            ]
        )
        == InvalidArgumentError.exit_code
    )


# -- containerd ---------------------------------------------------------------------


def test_export_runs_in_containerd(
    sn: pysnap.OverlaySnapshotter, app: Image, tmp_path: Path, containerd: ContainerdEnv
) -> None:
    """A chain made on pysnap, exported, imported by ctr into containerd's own overlayfs
    snapshotter (the private containerd of tests/containerd_env.py), runs."""
    dest = tmp_path / "app.tar"
    ref = "example.com/pysnap/app:1"
    export(sn, "app", dest, ref=ref, config={"Cmd": ["/bin/cat", "/hello.txt"]})
    ctr = containerd.ctr
    ctr("images", "import", "--snapshotter", "overlayfs", str(dest))
    assert ref in ctr("images", "ls", "-q").stdout.split()
    # containerd named the unpacked layers by the chain IDs pysnap computed
    names = ctr("snapshots", "--snapshotter", "overlayfs", "ls").stdout
    assert all(c in names for c in app.chain_ids)
    out = ctr(
        "run", "--rm", "--snapshotter", "overlayfs",
        "--runc-root", str(containerd.base / "runc"), "--fifo-dir", str(containerd.base / "fifo"),
        ref, "pysnap-img-test",
    )  # fmt: skip
    assert out.stdout == "made on pysnap\n"
    # and what `ctr images export` writes unpacks here, into the same chain IDs
    ctr("images", "export", str(tmp_path / "ctr.tar"), ref)
    again = unpack(sn, tmp_path / "ctr.tar", ref=ref)
    assert again.chain_ids[:2] == app.chain_ids
    assert _view_tree(sn, again.top) == _view_tree(sn, "app")
