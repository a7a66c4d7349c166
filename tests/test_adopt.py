"""The remote-snapshot protocol: containerd adopts layers a root already holds.

containerd (metadata/snapshot.go, 1.6 and 2.x) prepares each layer with the
label ``containerd.io/snapshot.ref=<chainID>``; a backend that answers
ALREADY_EXISTS is then walked with
``labels."containerd.io/snapshot.ref"==<chainID>,parent=="<backend parent>"``
and its first committed match becomes the layer. ``adopt_layers=True``
answers so exactly when such a committed snapshot exists. Run in process and
over gRPC, as test_snapshotter.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from containerd_env import (
    SKIP_REASON,
    SNAPSHOTTER,
    ContainerdEnv,
    Image,
    build_busybox_image,
    containerd_env,
    wait_until,
)

from pysnap import Info, Kind, OverlaySnapshotter, Usage, storage
from pysnap.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

REF = "containerd.io/snapshot.ref"
C0 = "sha256:" + "0" * 63 + "a"
C1 = "sha256:" + "1" * 63 + "b"


def containerd_filter(chain: str, backend_parent: str) -> str:
    """The filter containerd's metadata snapshotter walks with (Go's %s and %q)."""
    return f'labels."{REF}"=={chain},parent=="{backend_parent}"'


@pytest.fixture
def sn(open_sn: Callable[..., OverlaySnapshotter], tmp_path: Path) -> OverlaySnapshotter:
    return open_sn(tmp_path / "root", sync=False, adopt_layers=True)


def commit_layer(sn: OverlaySnapshotter, name: str, parent: str, chain: str) -> None:
    """A layer as pysnap's unpacker (name = chain) or containerd (name = ns/id/chain) commits it."""
    key = f"extract-{name}"
    sn.prepare(key, parent)  # no label: an apply, as without adoption
    sn.commit(name, key, labels={REF: chain})


def names(sn: OverlaySnapshotter) -> list[str]:
    return sorted(i.name for i in sn.walk())


def test_containerd_filters_find_layer_0_and_layer_1(sn: OverlaySnapshotter) -> None:
    commit_layer(sn, C0, "", C0)
    commit_layer(sn, C1, C0, C1)
    found0 = sn.walk(containerd_filter(C0, ""))
    found1 = sn.walk(containerd_filter(C1, C0))
    assert [(i.name, i.kind, i.parent) for i in found0] == [(C0, Kind.COMMITTED, "")]
    assert [(i.name, i.kind, i.parent) for i in found1] == [(C1, Kind.COMMITTED, C0)]
    assert sn.walk(containerd_filter(C1, "")) == []  # layer 1 is not a base layer
    assert sn.walk(containerd_filter(C0, C0)) == []


def test_prepare_and_view_of_held_layers_are_already_exists(sn: OverlaySnapshotter) -> None:
    commit_layer(sn, C0, "", C0)
    commit_layer(sn, C1, C0, C1)
    before = names(sn)
    for create in (sn.prepare, sn.view):
        with pytest.raises(AlreadyExistsError, match="adopt"):
            create(f"default/3/extract-1 {C0}", "", labels={REF: C0})
        with pytest.raises(AlreadyExistsError, match="adopt"):
            create(f"default/4/extract-2 {C1}", C0, labels={REF: C1, "x": "y"})
    assert names(sn) == before  # nothing made, nothing left


def test_never_otherwise(open_sn: Callable[..., OverlaySnapshotter], tmp_path: Path) -> None:
    sn = open_sn(tmp_path / "root", sync=False, adopt_layers=True)
    commit_layer(sn, C0, "", C0)
    sn.prepare("active-with-ref", "", labels={REF: C1})  # an ACTIVE one never matches
    made = [
        ("other parent", "k2", C0, {REF: C0}),  # C0 on C0: not what is held
        ("layer 1 as a base", "k1", "", {REF: C1}),
        ("other chain", "k3", "", {REF: C1}),
        ("no label", "k4", "", {"x": "y"}),
        ("no labels", "k5", "", None),
        ("empty ref is no ref", "k6", "", {REF: ""}),
    ]
    for _, key, parent, labels in made:
        sn.prepare(key, parent, labels=labels)
    sn.view("view-other-parent", C0, labels={REF: C0})
    active = {k for _, k, _, _ in made} | {"active-with-ref"}
    assert {i.name for i in sn.walk("kind==active")} == active
    assert [i.name for i in sn.walk("kind==view")] == ["view-other-parent"]
    # off (the default): a held layer is applied again, as by containerd's own overlay
    off = open_sn(tmp_path / "off", sync=False)
    commit_layer(off, C0, "", C0)
    off.prepare(f"extract-9 {C0}", "", labels={REF: C0})


def test_the_label_decides_not_the_name(sn: OverlaySnapshotter) -> None:
    # containerd names the backend snapshots it commits <namespace>/<id>/<name>,
    # with the ref label inherited: another namespace adopts them so.
    commit_layer(sn, f"default/2/{C0}", "", C0)
    commit_layer(sn, f"default/4/{C1}", f"default/2/{C0}", C1)
    sn.prepare(C0, "")  # a snapshot named like the chain, without the label: not a match
    sn.commit("plain-" + C0, C0)
    with pytest.raises(AlreadyExistsError):
        sn.prepare(f"other/1/extract-1 {C0}", "", labels={REF: C0})
    with pytest.raises(AlreadyExistsError):
        sn.prepare(f"other/2/extract-2 {C1}", f"default/2/{C0}", labels={REF: C1})
    sn.prepare(f"other/3/extract-3 {C1}", "plain-" + C0, labels={REF: C1})


def test_remove_update_and_rebase_keep_the_index(sn: OverlaySnapshotter) -> None:
    commit_layer(sn, C0, "", C0)
    sn.remove(C0)
    sn.prepare("k1", "", labels={REF: C0})  # removed: no match

    commit_layer(sn, "base", "", C0)
    sn.update(Info(name="base", labels={}), f"labels.{REF}")  # the label deleted
    sn.prepare("k2", "", labels={REF: C0})
    sn.update(Info(name="base", labels={REF: C0}), f"labels.{REF}")  # and put back
    with pytest.raises(AlreadyExistsError):
        sn.prepare("k3", "", labels={REF: C0})
    sn.update(Info(name="base", labels={REF: C1}))  # all labels replaced: another chain
    sn.prepare("k4", "", labels={REF: C0})
    with pytest.raises(AlreadyExistsError):
        sn.prepare("k5", "", labels={REF: C1})

    # containerd 2.2's parallel unpack: prepared without a parent, rebased on commit
    sn.prepare("rebased", "")
    sn.commit("top", "rebased", labels={REF: "sha256:top"}, parent="base")
    sn.prepare("k6", "", labels={REF: "sha256:top"})
    with pytest.raises(AlreadyExistsError):
        sn.prepare("k7", "base", labels={REF: "sha256:top"})


def test_bad_input_is_refused_before_the_look_up(sn: OverlaySnapshotter) -> None:
    commit_layer(sn, C0, "", C0)
    with pytest.raises(InvalidArgumentError):
        sn.prepare("", "", labels={REF: C0})
    with pytest.raises(InvalidArgumentError):
        sn.prepare("k", "", labels={REF: C0, "big": "x" * 5000})
    with pytest.raises(AlreadyExistsError, match="already exists"):
        sn.prepare(C0, "", labels={REF: C1})  # the key itself taken: as ever


def test_a_store_made_before_the_index_gets_it_on_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with OverlaySnapshotter(root, sync=False) as old:
        commit_layer(old, C0, "", C0)
        commit_layer(old, C1, C0, C1)
    # what an older pysnap left: no refs database
    env = lmdb.open(str(root / "metadata.lmdb"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"refs", txn=txn), delete=True)
    env.close()
    with OverlaySnapshotter(root, sync=False, adopt_layers=True) as sn:
        with pytest.raises(AlreadyExistsError):
            sn.prepare("k0", "", labels={REF: C0})
        with pytest.raises(AlreadyExistsError):
            sn.prepare("k1", C0, labels={REF: C1})


# -- containerd 1.6 adopts what `pysnap image unpack` made ------------------------------

# `pysnap image unpack` comes with the images branch: these run once it is merged.
_NO_UNPACK = "" if importlib.util.find_spec("pysnap.images") else "needs pysnap.images"
containerd_only = pytest.mark.skipif(
    bool(SKIP_REASON or _NO_UNPACK), reason=SKIP_REASON or _NO_UNPACK
)
ADOPTING_SERVER = ["--adopt-layers", "--log-level", "debug"]  # debug: every request logged


def pysnap_unpack(root: Path, tar: Path) -> list[str]:
    """``pysnap --root ROOT image unpack --json TAR`` beside the running server; the chain IDs."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pysnap",
            "--root",
            str(root),
            "image",
            "unpack",
            "--json",
            str(tar),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [layer["chain_id"] for layer in json.loads(r.stdout)["layers"]]


def requests(env: ContainerdEnv, method: str) -> list[str]:
    """The ``method`` requests ``pysnap serve --log-level debug`` logged, as they came."""
    log = (env.base / "pysnap.log").read_text(errors="replace")
    return [
        r.replace('\\"', '"') for r in re.findall(rf"pysnap\.server\.service: {method} (.*)", log)
    ]


def committed(env: ContainerdEnv) -> dict[str, str]:
    """The backend's committed snapshots and their parents, as pysnap serve holds them."""
    with env.backend() as backend:
        return {i.name: i.parent for i in backend.walk("kind==committed")}


GC_ROOT = "containerd.io/gc.root"


def adopt(env: ContainerdEnv, chains: list[str], *, pin: bool) -> None:
    """Per layer, what containerd's unpacker sends (CRI pulls; 2.x's transfer service).

    ``pin``: also label containerd's record of the layer ``containerd.io/gc.root``
    (containerd keeps the label; only snapshot labels reach pysnap), so no
    collection removes it before an image references it.
    """
    with env.through_containerd() as ctd:
        for parent, chain in zip(["", *chains[:-1]], chains, strict=True):
            labels = {REF: chain, **({GC_ROOT: "adopted"} if pin else {})}
            with pytest.raises(AlreadyExistsError):
                ctd.prepare(f"extract-{uuid.uuid4().hex} {chain}", parent, labels=labels)
            info = ctd.stat(chain)  # containerd recorded the adopted layer under its chain ID
            assert (info.kind, info.parent, info.labels[REF]) == (Kind.COMMITTED, parent, chain)
            assert (GC_ROOT in info.labels) == pin
    assert all(GC_ROOT not in p for p in requests(env, "Prepare"))  # containerd's own label
    walks = requests(env, "List")
    for parent, chain in zip(["", *chains[:-1]], chains, strict=True):
        assert any(f'filters: "{containerd_filter(chain, parent)}"' in w for w in walks), walks


def import_(env: ContainerdEnv, image: Image, *options: str) -> None:
    env.ctr("images", "import", *options, "--base-name", image.base_name, str(image.tar))


def collected(env: ContainerdEnv) -> None:
    """Run containerd's collector now and wait for it to finish with pysnap's root.

    The scheduler may pass over a removal made while a collection runs, so one
    is asked for (a lease deleted with --sync); it collects pysnap's root when a
    pysnap snapshot was removed, and ends that with a Cleanup call
    (metadata/snapshot.go garbageCollect)."""
    lease = f"collect-{uuid.uuid4().hex}"
    env.ctr("leases", "create", "--id", lease)
    env.ctr("leases", "rm", "--sync", lease)
    wait_until(lambda: bool(requests(env, "Cleanup")), what="containerd's collection")


def layers_of(chains: list[str]) -> dict[str, str]:
    return dict(zip(chains, ["", *chains[:-1]], strict=True))


@containerd_only
def test_containerd_adopts_the_unpacked_layers_and_runs_them(tmp_path: Path) -> None:
    image = build_busybox_image(tmp_path / "img", greeting="adopted")
    with containerd_env(ADOPTING_SERVER) as env:
        chains = pysnap_unpack(env.pysnap_root, image.tar)
        assert committed(env) == layers_of(chains)
        adopt(env, chains, pin=True)
        import_(env, image, "--no-unpack")
        assert env.run(image.ref, "adopt-run").stdout == "adopted\n"
        # no layer was applied: no Commit reached pysnap, and only the rootfs was prepared
        assert requests(env, "Commit") == []
        prepared = [p for p in requests(env, "Prepare") if "extract-" not in p]
        assert len(prepared) == 1 and f'parent: "{chains[-1]}"' in prepared[0]
        collected(env)  # the run's rootfs removed; the pinned layers stay
        assert committed(env) == layers_of(chains)


@containerd_only
def test_unpinned_adopted_layers_go_at_the_next_collection(tmp_path: Path) -> None:
    image = build_busybox_image(tmp_path / "img", greeting="unpinned")
    with containerd_env(ADOPTING_SERVER) as env:
        chains = pysnap_unpack(env.pysnap_root, image.tar)
        adopt(env, chains, pin=False)
        # --no-unpack sets no gc.ref label on the image: the next collection (any
        # deletion starts one, the import's own lease among them) finds the adopted
        # records unreferenced
        import_(env, image, "--no-unpack")
        collected(env)
        assert committed(env) == {}  # removed from pysnap's root too (README)
        with env.through_containerd() as ctd, pytest.raises(NotFoundError):
            ctd.stat(chains[-1])


@containerd_only
def test_import_after_adoption_applies_nothing_and_keeps_the_layers(tmp_path: Path) -> None:
    image = build_busybox_image(tmp_path / "img", greeting="kept")
    with containerd_env(ADOPTING_SERVER) as env:
        chains = pysnap_unpack(env.pysnap_root, image.tar)
        adopt(env, chains, pin=True)
        # 1.6's image.Unpack finds every chain ID in containerd and labels the image's
        # config with containerd.io/gc.ref.snapshot.pysnap=<top>: the pins can go
        import_(env, image, "--snapshotter", SNAPSHOTTER)
        assert requests(env, "Commit") == []
        with env.through_containerd() as ctd:
            for chain in chains:
                ctd.update(Info(name=chain, labels={}), f"labels.{GC_ROOT}")
        assert env.run(image.ref, "kept-run").stdout == "kept\n"
        collected(env)
        assert committed(env) == layers_of(chains)


@containerd_only
def test_containerd_16_import_of_held_layers_applies_them_again(tmp_path: Path) -> None:
    image = build_busybox_image(tmp_path / "img", greeting="again")
    with containerd_env(ADOPTING_SERVER) as env:
        chains = pysnap_unpack(env.pysnap_root, image.tar)
        # 1.6's ctr import unpacks with image.Unpack, whose prepares carry no ref label
        import_(env, image, "--snapshotter", SNAPSHOTTER)
        assert all("snapshot.ref" not in p for p in requests(env, "Prepare"))
        assert len(requests(env, "Commit")) == len(chains)  # every layer applied again
        again = {n for n in committed(env) if n not in chains}
        assert len(again) == len(chains) and all(n.startswith("default/") for n in again)
        assert env.run(image.ref, "again-run").stdout == "again\n"
        collected(env)
        # containerd knew only its own copies: the collection removed pysnap's
        assert set(committed(env)) == again


def _waits_for_the_writer_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in MetaStore.transaction(write=True), asleep (LMDB's writer lock)."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None or frame.f_code.co_name != "transaction" or not frame.f_locals.get("write"):
        return False
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def test_the_look_up_is_in_the_creates_write_transaction(tmp_path: Path) -> None:
    """A match committed while a prepare waits for the writer lock is seen by that prepare."""
    with OverlaySnapshotter(tmp_path / "root", sync=False, adopt_layers=True) as sn:
        sn.prepare("extract-first", "")
        outcome: list[object] = []
        racer = threading.Thread(
            target=lambda: outcome.append(
                _outcome(sn.prepare, f"extract-second {C0}", "", labels={REF: C0})
            )
        )
        # the commit of the match, held open: the racer's prepare must wait for it
        with sn._ms.transaction(write=True) as tx:
            racer.start()
            wait_until(
                lambda: _waits_for_the_writer_lock(racer),
                what="the prepare to wait for the writer lock",
            )
            storage.commit_active(tx, "extract-first", C0, Usage(), {REF: C0})
        racer.join()
        assert [type(o) for o in outcome] == [AlreadyExistsError]
        assert names(sn) == [C0]


def _outcome(call: Callable[..., object], *args: object, **kwargs: object) -> object:
    try:
        return call(*args, **kwargs)
    except AlreadyExistsError as e:
        return e
