"""pysnap.mountinfo: the kernel's escapes decoded, and real mounts found by what they use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pysnap import mountinfo
from snapcore import mount as _sys

SAMPLE = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "47 22 0:40 / /tmp/with\\040space rw,relatime master:3 - overlay overlay "
    "rw,lowerdir=/l/a\\072b:/l/c,upperdir=/u\\054p,workdir=/w\\134x,uuid=on\n"
    "48 22 8:1 /srv/data /mnt/bind rw - ext4 /dev/sda1 rw\n"
)


def test_parse_decodes_every_field() -> None:
    root, ovl, bind = mountinfo.parse(SAMPLE)
    assert (root.mount_id, root.parent_id, root.dev) == (22, 1, os.makedev(8, 1))
    assert ovl.mount_point == "/tmp/with space"
    assert ovl.fstype == "overlay" and ovl.source == "overlay"
    # ':' escaped as \072 stays inside one layer; unescaped ':' separates layers
    assert ovl.layer_dirs() == ["/l/a:b", "/l/c", "/u,p", "/w\\x"]
    assert mountinfo.decode(ovl.option("upperdir") or "") == "/u,p"
    assert ovl.option("index") is None
    assert bind.root == "/srv/data" and root.layer_dirs() == []


def test_decode_keeps_bytes_that_are_not_utf8() -> None:
    assert os.fsencode(mountinfo.decode("/a\\377b")) == b"/a\xffb"
    assert mountinfo.decode("plain") == "plain"


def test_mounts_under_and_users_of_read_this_namespace(tmp_path: Path) -> None:
    entries = mountinfo.parse(SAMPLE)
    assert [e.mount_id for e in mountinfo.mounts_under("/tmp", entries)] == [47]
    assert mountinfo.read()  # this process has mounts: at least its root
    assert mountinfo.users_of(tmp_path) == []


@pytest.mark.root
def test_users_of_finds_a_bind_and_an_overlay(tmp_path: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "target"
    (src / "sub").mkdir(parents=True)
    upper, work, lower = tmp_path / "up", tmp_path / "work", tmp_path / "low"
    for d in (target, upper, work, lower):
        d.mkdir()
    _sys.mount(src / "sub", target, None, _sys.MS_BIND)
    try:
        (user,) = mountinfo.users_of(src)
        assert user.mount_point == str(target)
        assert mountinfo.users_of(src / "sub") == [user]
        assert mountinfo.users_of(upper) == []
    finally:
        _sys.umount(target)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _sys.mount("overlay", target, "overlay", 0, opts)
    try:
        assert [e.mount_point for e in mountinfo.users_of(upper)] == [str(target)]
        assert [e.mount_point for e in mountinfo.users_of(lower)] == [str(target)]
        assert [e.mount_point for e in mountinfo.mounts_under(tmp_path)] == [str(target)]
    finally:
        _sys.umount(target)
    assert mountinfo.users_of(upper) == []
