"""Layer extraction: whiteouts, links, and that no member can write outside the target."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from occystrap.extract import UnsafeMember, apply_layer, split_member_path


def make_tar(*members: tuple) -> io.BytesIO:
    """A tar from (kind, name[, data-or-linkname[, mode]]) tuples."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            info.mode = rest[1] if len(rest) > 1 else (0o755 if kind == "dir" else 0o644)
            payload = None
            if kind == "file":
                payload = rest[0] if rest else b""
                info.size = len(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    buffer.seek(0)
    return buffer


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every entry under `directory` with its type, size, link count and content/target."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                detail = path.read_bytes()
            else:
                detail = None
            entries[str(path.relative_to(directory))] = (info.st_mode, info.st_nlink, detail)
    return entries


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(target, outside): the extraction target and a sibling holding a secret."""
    target = tmp_path / "root"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"keep me")
    return target, outside


def test_files_dirs_symlinks_hardlinks_and_modes(sandbox):
    target, _ = sandbox
    report = apply_layer(
        make_tar(
            ("dir", "./etc", None, 0o750),
            ("file", "./etc/hosts", b"127.0.0.1 localhost\n", 0o600),
            ("file", "usr/bin/tool", b"#!/bin/sh\n", 0o755),
            ("symlink", "bin", "usr/bin"),
            ("hardlink", "usr/bin/tool2", "usr/bin/tool"),
            ("fifo", "run/pipe"),
        ),
        target,
    )
    assert report.unsafe == [] and report.failed == []
    assert (target / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((target / "etc/hosts").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "usr/bin/tool").stat().st_mode) == 0o755
    assert os.readlink(target / "bin") == "usr/bin"
    assert (target / "usr/bin/tool").stat().st_ino == (target / "usr/bin/tool2").stat().st_ino
    assert stat.S_ISFIFO((target / "run/pipe").lstat().st_mode)


def test_unprivileged_skips_devices_and_keeps_directories_writable(sandbox):
    target, _ = sandbox
    report = apply_layer(
        make_tar(("dir", "ro", None, 0o555), ("file", "ro/f", b"x"), ("chardev", "dev/null")),
        target,
        privileged=False,
    )
    assert report.skipped_devices == ["dev/null"]
    assert not (target / "dev/null").exists()
    assert stat.S_IMODE((target / "ro").stat().st_mode) == 0o755
    assert (target / "ro/f").read_bytes() == b"x"


def test_privileged_creates_devices(sandbox):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    target, _ = sandbox
    report = apply_layer(make_tar(("chardev", "dev/null")), target, privileged=True, devices=True)
    assert report.skipped_devices == []
    assert stat.S_ISCHR((target / "dev/null").lstat().st_mode)


def test_whiteout_removes_lower_entry(sandbox):
    target, _ = sandbox
    lower = make_tar(("file", "a/keep", b"1"), ("file", "a/gone", b"2"), ("dir", "a/d"))
    apply_layer(lower, target)
    apply_layer(make_tar(("file", "a/.wh.gone"), ("file", "a/.wh.d")), target)
    assert sorted(os.listdir(target / "a")) == ["keep"]


def test_opaque_directory_hides_lower_contents_but_keeps_its_own(sandbox):
    target, _ = sandbox
    apply_layer(make_tar(("file", "d/old", b"1"), ("file", "d/sub/old", b"2")), target)
    apply_layer(
        make_tar(("file", "d/sub/new", b"3"), ("file", "d/.wh..wh..opq"), ("file", "d/new", b"4")),
        target,
    )
    assert snapshot(target / "d").keys() == {"sub", "sub/new", "new"}


def test_upper_file_replaces_lower_directory_and_symlink(sandbox):
    target, outside = sandbox
    lower = make_tar(("file", "x/y", b"1"), ("symlink", "link", str(outside / "secret")))
    apply_layer(lower, target)
    apply_layer(make_tar(("file", "x", b"file now"), ("file", "link", b"overwritten")), target)
    assert (target / "x").read_bytes() == b"file now"
    assert (target / "link").read_bytes() == b"overwritten"
    assert (outside / "secret").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "members",
    [
        [("file", "../escape", b"x")],
        [("file", "a/../../escape", b"x")],
        [("file", "/abs-escape", b"x")],
        [("symlink", "out", "../outside"), ("file", "out/secret", b"pwned")],
        [("symlink", "out", "/"), ("file", "out/tmp/escape", b"x")],
        [("symlink", "a", "."), ("symlink", "a/b", "../outside"), ("file", "a/b/secret", b"x")],
        [("hardlink", "passwd", "/etc/passwd")],
        [("hardlink", "secret", "../outside/secret"), ("file", "secret", b"pwned")],
        [("symlink", "out", "../outside"), ("hardlink", "s", "out/secret")],
        [("symlink", "out", "../outside"), ("file", "out/.wh.secret")],
        [("symlink", "out", "../outside"), ("file", "out/.wh..wh..opq")],
        [("symlink", "out", "../outside"), ("dir", "out/newdir")],
    ],
)
def test_hostile_members_never_touch_outside(sandbox, members):
    target, outside = sandbox
    before = snapshot(target.parent / "outside"), os.listdir(target.parent)
    passwd = Path("/etc/passwd").stat()
    report = apply_layer(make_tar(*members), target)
    assert (snapshot(target.parent / "outside"), os.listdir(target.parent)) == before
    assert Path("/etc/passwd").stat().st_nlink == passwd.st_nlink
    assert report.unsafe or report.failed
    assert (outside / "secret").read_bytes() == b"keep me"


def test_split_member_path():
    assert split_member_path("./a//b/./c/") == ("a", "b", "c")
    assert split_member_path("./") == ()
    for hostile in ("/etc", "../x", "a/../../x", "a/.."):
        with pytest.raises(UnsafeMember):
            split_member_path(hostile)


_COMPONENTS = st.sampled_from(["a", "link", "secret", "..", ".", "", ".wh.secret", ".wh..wh..opq"])
_NAMES = st.lists(_COMPONENTS, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/etc/evil", "/tmp", "../outside/secret"]
)
_LINK_TARGETS = st.sampled_from(
    ["/", "..", "../..", "../outside", "../outside/secret", "/etc/passwd", "a", "a/b", "link", "."]
)
_MEMBERS = st.one_of(
    st.tuples(st.just("file"), _NAMES, st.just(b"pwned")),
    st.tuples(st.just("dir"), _NAMES),
    st.tuples(st.just("symlink"), st.sampled_from(["link", "a/link", "a"]), _LINK_TARGETS),
    st.tuples(st.just("hardlink"), _NAMES, _LINK_TARGETS | _NAMES),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(st.lists(_MEMBERS, min_size=1, max_size=8), min_size=1, max_size=3))
def test_property_no_layer_writes_outside_the_target(layers):
    with tempfile.TemporaryDirectory() as scratch:
        box = Path(scratch)
        target = box / "root"
        target.mkdir()
        (box / "outside").mkdir()
        (box / "outside" / "secret").write_bytes(b"keep me")
        before = snapshot(box / "outside"), sorted(os.listdir(box))
        passwd_links = Path("/etc/passwd").stat().st_nlink
        for members in layers:
            apply_layer(make_tar(*members), target)
        assert (snapshot(box / "outside"), sorted(os.listdir(box))) == before
        assert Path("/etc/passwd").stat().st_nlink == passwd_links
        assert not Path("/etc/evil").exists()
