"""Reading image layouts and docker archives: ref and platform selection, verification, chain IDs.

Real layouts, tars and docker save archives made by tests/image_util.py; no
snapshotter involved (tests/test_images.py unpacks and exports).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from image_util import OCI_INDEX, OCI_LAYER_GZIP, Layout, docker_archive, layer_tar, sha, tar_of

from pysnap import blobstore, owner
from pysnap.errors import InvalidArgumentError, NotFoundError, UnimplementedError
from pysnap.images import Platform, chain_ids
from pysnap.images.layout import ImageSource, normalize_ref

A = layer_tar({"a.txt": b"a\n"})
B = layer_tar({"dir/b.txt": b"b\n"})
HOST = Platform.host()


def test_chain_ids_follow_the_image_spec() -> None:
    a, b, c = sha(b"1"), sha(b"2"), sha(b"3")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []
    with pytest.raises(InvalidArgumentError, match="diff ID 1"):
        chain_ids([a, "sha256:xyz"])


@pytest.fixture
def simple(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    lay = Layout(tmp_path / "oci")
    m = lay.image(
        [A, B], arch=HOST.architecture, annotations={"org.opencontainers.image.ref.name": "v1"}
    )
    lay.index([m])
    return lay.path, m


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_resolve_a_layout(
    simple: tuple[Path, dict[str, object]], tmp_path: Path, as_tar: bool
) -> None:
    path, m = simple
    if as_tar:
        path = tar_of(path, tmp_path / "oci.tar")
    with ImageSource(path) as src:
        r = src.resolve()
        assert r.manifest_digest == m["digest"]
        assert r.diff_ids == (sha(A), sha(B))
        assert [b.desc.media_type for b in r.layers] == [OCI_LAYER_GZIP] * 2
        with src.open_blob(r.layers[1], "layer 1") as reader:
            data = reader.read()
            assert reader.finish() == r.layers[1].desc.digest
        assert sha(data) == r.layers[1].desc.digest
        assert src.resolve("v1") == r
        with pytest.raises(NotFoundError, match=r"no image 'v2'.*has: v1"):
            src.resolve("v2")


def test_nested_index_picks_the_platform(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    arm = lay.image([A], arch="arm64", platform={"os": "linux", "architecture": "arm64"})
    ours = lay.image([B], platform={"os": "linux", "architecture": HOST.architecture})
    v6 = lay.image(
        [A, B], arch="arm", platform={"os": "linux", "architecture": "arm", "variant": "v6"}
    )
    inner = lay.doc(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [arm, ours, v6]}, OCI_INDEX
    )
    outer = lay.doc({"schemaVersion": 2, "manifests": [inner]}, OCI_INDEX)
    lay.index([{**outer, "annotations": {"io.containerd.image.name": "docker.io/library/x:1"}}])
    with ImageSource(lay.path) as src:
        assert src.resolve().manifest_digest == ours["digest"]
        assert src.resolve(platform="linux/arm64/v8").manifest_digest == arm["digest"]
        assert src.resolve("x:1", platform="linux/aarch64").manifest_digest == arm["digest"]
        # an arm v7 machine runs v6 images, as containerd's matcher allows
        assert src.resolve(platform="linux/arm/v7").manifest_digest == v6["digest"]
        with pytest.raises(
            NotFoundError, match=r"no manifest for platform linux/s390x.*linux/arm64"
        ):
            src.resolve(platform="linux/s390x")
        with pytest.raises(InvalidArgumentError, match="os/architecture"):
            src.resolve(platform="amd64")


def test_manifest_without_platform_is_matched_by_its_config(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    arm = lay.image([A], arch="arm64")
    ours = lay.image([B], arch=HOST.architecture)
    lay.index([arm, ours])  # no names: one image, two platforms
    with ImageSource(lay.path) as src:
        assert src.resolve().manifest_digest == ours["digest"]
        assert src.resolve(platform="linux/arm64").manifest_digest == arm["digest"]


def test_several_images_need_a_ref(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    one = lay.image(
        [A], annotations={"io.containerd.image.name": "docker.io/library/busybox:latest"}
    )
    two = lay.image([B], annotations={"org.opencontainers.image.ref.name": "two"})
    lay.index([one, two])
    with ImageSource(lay.path) as src:
        with pytest.raises(InvalidArgumentError, match=r"several images.*busybox:latest, two"):
            src.resolve()
        assert src.resolve("busybox").manifest_digest == one["digest"]
        assert src.resolve("docker.io/library/busybox:latest").manifest_digest == one["digest"]
        assert src.resolve("two").manifest_digest == two["digest"]


def test_normalize_ref() -> None:
    assert normalize_ref("busybox") == "docker.io/library/busybox:latest"
    assert normalize_ref("me/app:1") == "docker.io/me/app:1"
    assert normalize_ref("localhost:5000/app") == "localhost:5000/app:latest"
    assert normalize_ref("ghcr.io/a/b@sha256:00") == "ghcr.io/a/b@sha256:00"


def _edit_manifest(lay: Layout, m: dict[str, object], change: object) -> None:
    path = lay.path / "blobs" / "sha256" / str(m["digest"])[7:]
    manifest = json.loads(path.read_bytes())
    change(manifest)  # type: ignore[operator]
    lay.index([lay.doc(manifest, str(m["mediaType"]))])


@pytest.mark.parametrize(
    ("media_type", "error", "match"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", UnimplementedError, "encrypted"),
        ("application/x-tar", InvalidArgumentError, "unknown media type 'application/x-tar'"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", None, ""),
        ("application/vnd.oci.image.layer.v1.tar+zstd", None, ""),
    ],
)
def test_layer_media_types(
    tmp_path: Path, media_type: str, error: type[Exception] | None, match: str
) -> None:
    lay = Layout(tmp_path / "oci")
    m = lay.image([A])

    def retype(manifest: dict[str, list[dict[str, str]]]) -> None:
        manifest["layers"][0]["mediaType"] = media_type

    _edit_manifest(lay, m, retype)
    with ImageSource(lay.path) as src:
        if error is None:
            assert src.resolve(platform="linux/amd64").layers[0].desc.media_type == media_type
        else:
            with pytest.raises(error, match=match):
                src.resolve(platform="linux/amd64")


def test_not_an_image(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    m = lay.image([A])

    def artifact(manifest: dict[str, dict[str, str]]) -> None:
        manifest["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"

    _edit_manifest(lay, m, artifact)
    with ImageSource(lay.path) as src, pytest.raises(InvalidArgumentError, match="not an image"):
        src.resolve(platform="linux/amd64")


def test_documents_are_verified(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    m = lay.image([A])
    lay.index([m])
    blob = lay.path / "blobs" / "sha256" / str(m["digest"])[7:]
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))  # one byte more
    with (
        ImageSource(lay.path) as src,
        pytest.raises(InvalidArgumentError, match=f"{m['digest']}.*bytes"),
    ):
        src.resolve(platform="linux/amd64")
    blob.write_bytes(good.replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))  # same size
    with ImageSource(lay.path) as src, pytest.raises(InvalidArgumentError, match="digest mismatch"):
        src.resolve(platform="linux/amd64")
    blob.unlink()
    with ImageSource(lay.path) as src, pytest.raises(NotFoundError, match=str(m["digest"])):
        src.resolve(platform="linux/amd64")


def test_layer_blobs_are_verified_while_they_stream(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    lay.index([lay.image([A, B])])
    with ImageSource(lay.path) as src:
        layer = src.resolve(platform="linux/amd64").layers[1]
    path = lay.path / "blobs" / "sha256" / layer.desc.digest[7:]
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer's CRC: same size, other digest
    path.write_bytes(data)
    with ImageSource(lay.path) as src, src.open_blob(layer, "layer 1") as reader:
        with pytest.raises(
            InvalidArgumentError,
            match=f"layer 1: digest mismatch: expected {layer.desc.digest}, "
            f"the content is {sha(data)}",
        ):
            reader.read()
        with pytest.raises(InvalidArgumentError, match="digest mismatch"):
            reader.finish()  # a consumer that swallowed the error cannot hide it
    path.write_bytes(data[:-1])
    with ImageSource(lay.path) as src, pytest.raises(InvalidArgumentError, match="descriptor says"):
        src.open_blob(layer, "layer 1")
    path.unlink()
    with ImageSource(lay.path) as src, pytest.raises(NotFoundError, match="layer 1: blob not in"):
        src.open_blob(layer, "layer 1")


def test_a_blob_its_consumer_hashes_is_checked_against_that_digest(tmp_path: Path) -> None:
    """hashing=False (a layer apply hashes what it reads): the reader counts, finish checks."""
    lay = Layout(tmp_path / "oci")
    lay.index([lay.image([A, B])])
    with ImageSource(lay.path) as src:
        layer = src.resolve(platform="linux/amd64").layers[1]
        data = (lay.path / "blobs" / "sha256" / layer.desc.digest[7:]).read_bytes()
        with src.open_blob(layer, "layer 1", hashing=False) as reader:
            assert reader.read() == data
            assert reader.finish(sha(data)) == layer.desc.digest
        with src.open_blob(layer, "layer 1", hashing=False) as reader:
            reader.read()
            with pytest.raises(InvalidArgumentError, match=f"digest mismatch.*{sha(b'x')}"):
                reader.finish(sha(b"x"))
        with src.open_blob(layer, "layer 1", hashing=False) as reader:
            reader.read(3)
            with pytest.raises(InvalidArgumentError, match=r"stopped \d+ bytes before the end"):
                reader.finish(sha(data[:3]))
            with pytest.raises(InvalidArgumentError, match="before the end"):
                reader.read()  # kept, as every error of the reader


def test_absent_non_distributable_layer_names_its_url(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    m = lay.image([A])

    def foreign(manifest: dict[str, list[dict[str, object]]]) -> None:
        manifest["layers"][0]["mediaType"] = (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        )
        manifest["layers"][0]["urls"] = ["https://example.com/base.tgz"]
        (lay.path / "blobs" / "sha256" / str(manifest["layers"][0]["digest"])[7:]).unlink()

    _edit_manifest(lay, m, foreign)
    with ImageSource(lay.path) as src:
        layer = src.resolve(platform="linux/amd64").layers[0]
        assert not src.has_blob(layer)
        with pytest.raises(
            NotFoundError, match=r"non-distributable blob.*https://example\.com/base\.tgz"
        ):
            src.open_blob(layer, "layer 0")


def test_rootfs_must_match_the_layers(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    config = lay.doc(
        {"rootfs": {"type": "layers", "diff_ids": [sha(A)]}},
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = {"schemaVersion": 2, "config": config, "layers": []}
    lay.index([lay.doc(manifest, "application/vnd.oci.image.manifest.v1+json")])
    with (
        ImageSource(lay.path) as src,
        pytest.raises(InvalidArgumentError, match="1 diff IDs for 0 layers"),
    ):
        src.resolve()


def test_truncated_archive(simple: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    whole = tar_of(simple[0], tmp_path / "oci.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    with tarfile.open(tmp_path / "oci.tar") as tar:
        last = max(tar.getmembers(), key=lambda m: m.offset_data)
    cut.write_bytes(whole[: last.offset_data + last.size // 2])  # inside the last member's data
    with pytest.raises(InvalidArgumentError, match=f"truncated archive: {last.name} is cut short"):
        ImageSource(cut)
    cut.write_bytes(whole[:2000])  # inside the second member's headers
    with pytest.raises(InvalidArgumentError, match="truncated archive"):
        ImageSource(cut)
    cut.write_bytes(b"\x1f\x8b" + whole[:1000])
    with pytest.raises(InvalidArgumentError, match="not a readable tar"):
        ImageSource(cut)


def test_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        ImageSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="neither an OCI image layout"):
        ImageSource(tmp_path / "empty")


def test_docker_save_archive(tmp_path: Path) -> None:
    arc = docker_archive(tmp_path / "d.tar", [(["busybox:latest"], [A, B]), (["other:1"], [B])])
    with ImageSource(arc) as src:
        with pytest.raises(InvalidArgumentError, match=r"several images.*busybox:latest, other:1"):
            src.resolve()
        r = src.resolve("docker.io/library/busybox")
        assert r.manifest_digest == ""
        assert r.diff_ids == (sha(A), sha(B))
        with src.open_blob(r.layers[0], "layer 0") as reader:
            assert reader.read() == A
            assert reader.finish() == sha(A)  # no digest named: what was read
        other = src.resolve("other:1")  # its layer is a symlink to the first image's
        assert other.diff_ids == (sha(B),)
        with src.open_blob(other.layers[0], "layer 0") as reader:
            assert reader.read() == B
    with tarfile.open(arc) as tar:
        assert any(m.issym() for m in tar.getmembers())


def test_docker_config_is_checked_by_its_name(tmp_path: Path) -> None:
    arc = docker_archive(tmp_path / "d.tar", [(["x:1"], [A])])
    with tarfile.open(arc) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    name = next(n for n in members if n.endswith(".json") and n != "manifest.json")
    members[name] = members[name].replace(b"amd64", b"arm64")
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for n, data in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tar.addfile(ti, __import__("io").BytesIO(data))
    with ImageSource(bad) as src, pytest.raises(InvalidArgumentError, match="digest mismatch"):
        src.resolve()


def test_blobs_kept_while_referenced(tmp_path: Path) -> None:
    """cleanup() removes blobs no label names and copies whose writer died; keeps the rest."""
    import pysnap

    with pysnap.OverlaySnapshotter(tmp_path / "root") as sn:
        root = sn.root
        for data in (b"kept", b"dropped"):
            ing = blobstore.Ingest(root)
            ing.write(data)
            ing.commit(sha(data))
        live = blobstore.Ingest(root)
        # a writer killed mid-copy: its ingest file stays behind
        code = f"import os, pysnap.blobstore as b; b.Ingest({root!r}).write(b'x'); os._exit(0)"
        subprocess.run([sys.executable, "-c", code], check=True)
        assert len(os.listdir(os.path.join(root, "blobs", "ingest"))) == 2
        sn.prepare("k", labels={blobstore.BLOB_DIGEST_LABEL: sha(b"kept")})
        dropped = blobstore.blob_path(root, sha(b"dropped"))
        would = sn.cleanup(dry_run=True)
        assert dropped in would and len(would) == 2  # the blob and the dead writer's copy
        assert os.path.exists(dropped)
        assert sn.cleanup() == would
        assert os.path.exists(blobstore.blob_path(root, sha(b"kept")))
        assert not os.path.exists(blobstore.blob_path(root, sha(b"dropped")))
        assert os.listdir(os.path.join(root, "blobs", "ingest")) == [os.path.basename(live.path)]
        live.abort()
        sn.remove("k")
        sn.cleanup()
        assert not os.path.exists(blobstore.blob_path(root, sha(b"kept")))
        assert sorted(os.listdir(os.path.join(root, "blobs"))) == ["ingest", "sha256"]


def test_owner_alive() -> None:
    me = owner.current()
    assert me.alive()
    assert owner.Owner.parse(str(me)).alive()  # type: ignore[union-attr]
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert not owner.Owner(me.boot_id, int(child.stdout), me.start).alive()
    assert not owner.Owner("another-boot", me.pid, me.start).alive()
    assert owner.Owner.parse("not a token") is None
    old_token = owner.Owner.parse(f"{me.boot_id}.{me.pid}.{me.start}")  # before pid_ns was kept
    assert old_token is not None and old_token.pid_ns is None and old_token.alive()


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1) (util-linux)")
def test_an_owner_in_another_pid_namespace_counts_as_running() -> None:
    # Its pid (1 there) means another process here, or none: never judge it dead.
    code = "from pysnap import owner; print(owner.current(), flush=True); input()"
    child = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        theirs = owner.Owner.parse(child.stdout.readline().strip())
    finally:
        child.communicate("\n", timeout=30)
    me = owner.current()
    assert theirs is not None and theirs.pid_ns != me.pid_ns and theirs.pid == 1
    assert theirs.alive()
    assert not owner.Owner(me.boot_id, theirs.pid, theirs.start, me.pid_ns).alive()
