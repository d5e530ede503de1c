"""Hostile layers: whiteouts of `.`/`..`, devices, setuid bits, expansion bombs, broken tars.

Every refusal must be an `OccystrapError` (one line for the CLI) and nothing outside the
target may ever change, whatever the layer holds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from occystrap.errors import FilesystemError, OccystrapError
from occystrap.extract import (
    DEFAULT_EXPANSION_FLOOR,
    ENTRY_COST,
    GIB,
    MAX_DEPTH,
    ExpandPolicy,
    ExpansionBudget,
    ExpansionBudgetExceeded,
    HostileLayerError,
    apply_layer,
    parse_byte_size,
)
from tests.tmpfs import mounted_tmpfs

from .test_extract import make_tar, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(target, outside): a target holding a lower layer, and a sibling holding a secret."""
    target = tmp_path / "staging" / "rootfs"
    target.mkdir(parents=True)
    (tmp_path / "staging" / "layer.tar").write_bytes(b"staged")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"keep me")
    apply_layer(make_tar(("file", "etc/hosts", b"localhost"), ("file", "a/b", b"b")), target)
    return target, outside


@pytest.mark.parametrize("name", ["./.wh..", ".wh..", "a/.wh..", "./.wh...", "a/.wh...", ".wh..."])
def test_whiteout_of_dot_or_dotdot_rejects_the_layer_and_deletes_nothing(box, name):
    target, _ = box
    before = snapshot(target.parent.parent)
    with pytest.raises(HostileLayerError, match="whiteout"):
        apply_layer(make_tar(("file", name)), target)
    assert snapshot(target.parent.parent) == before


def test_whiteout_through_a_symlinked_directory_is_skipped(box):
    target, outside = box
    report = apply_layer(
        make_tar(("symlink", "out", str(outside)), ("file", "out/.wh.secret")), target
    )
    assert report.unsafe == ["out/.wh.secret"]
    assert (outside / "secret").read_bytes() == b"keep me"


def test_whiteout_of_a_symlink_removes_the_link_not_its_target(box):
    target, outside = box
    apply_layer(make_tar(("symlink", "s", str(outside / "secret"))), target)
    apply_layer(make_tar(("file", ".wh.s")), target)
    assert not os.path.lexists(target / "s")
    assert (outside / "secret").read_bytes() == b"keep me"


@needs_root
def test_devices_are_skipped_by_default_even_as_root_with_one_warning(box, caplog):
    target, _ = box
    layer = make_tar(("chardev", "dev/null"), ("chardev", "dev/zero"), ("chardev", "dev/mem"))
    with caplog.at_level(logging.WARNING, logger="occystrap.extract"):
        report = apply_layer(layer, target, what="layer sha256:abc")
    assert report.skipped_devices == ["dev/null", "dev/zero", "dev/mem"]
    assert not (target / "dev" / "mem").exists()
    warnings = [r.getMessage() for r in caplog.records if "device" in r.getMessage()]
    assert warnings == [
        "layer sha256:abc: skipped 3 device node(s) (create them with devices=true, as root)"
    ]


def test_devices_are_never_created_without_privilege_even_when_asked(box):
    target, _ = box
    report = apply_layer(make_tar(("chardev", "dev/mem")), target, privileged=False, devices=True)
    assert report.skipped_devices == ["dev/mem"]
    assert not (target / "dev" / "mem").exists()


def _setuid_layer() -> io.BytesIO:
    return make_tar(
        ("dir", "shared", None, 0o2775),
        ("file", "bin/su", b"#!", 0o4755),
        ("file", "bin/wall", b"#!", 0o2755),
        ("dir", "tmp", None, 0o1777),
    )


def test_setuid_and_setgid_are_cleared_by_default_with_one_warning(box, caplog):
    target, _ = box
    with caplog.at_level(logging.WARNING, logger="occystrap.extract"):
        report = apply_layer(_setuid_layer(), target)
    assert sorted(report.cleared_setuid) == ["bin/su", "bin/wall", "shared"]
    assert stat.S_IMODE((target / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "bin/wall").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "shared").stat().st_mode) == 0o775
    assert stat.S_IMODE((target / "tmp").stat().st_mode) == 0o1777  # sticky is harmless
    assert len([r for r in caplog.records if "setuid" in r.getMessage()]) == 1


def test_setuid_and_setgid_are_kept_when_asked(box):
    target, _ = box
    report = apply_layer(_setuid_layer(), target, setuid=True)
    assert report.cleared_setuid == []
    assert stat.S_IMODE((target / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((target / "bin/wall").stat().st_mode) == 0o2755


def test_expansion_budget_stops_a_layer_that_writes_too_much(box):
    target, _ = box
    budget = ExpansionBudget(1024 * 1024)
    with pytest.raises(ExpansionBudgetExceeded, match="expansion budget"):
        apply_layer(make_tar(("file", "zeros", bytes(2 * 1024 * 1024))), target, budget=budget)
    assert budget.used <= budget.limit + 1024 * 1024  # stopped within one chunk


def test_expansion_budget_is_shared_by_the_layers_of_an_image(box):
    target, _ = box
    budget = ExpansionBudget(3 * 600_000)
    for index in range(2):
        apply_layer(make_tar(("file", f"f{index}", bytes(600_000))), target, budget=budget)
    with pytest.raises(ExpansionBudgetExceeded):
        apply_layer(make_tar(("file", "f2", bytes(600_000))), target, budget=budget)


def test_expansion_budget_charges_every_entry_so_empty_files_cannot_flood_inodes(box):
    target, _ = box
    budget = ExpansionBudget(100 * ENTRY_COST)
    with pytest.raises(ExpansionBudgetExceeded):
        apply_layer(make_tar(*[("file", f"e{n}") for n in range(200)]), target, budget=budget)
    assert len(os.listdir(target)) < 110


def test_default_budget_is_twenty_times_the_compressed_size_with_a_floor():
    assert ExpansionBudget.for_compressed_size(4 * 1024**2).limit == DEFAULT_EXPANSION_FLOOR
    assert ExpansionBudget.for_compressed_size(1024**3).limit == 20 * 1024**3
    assert ExpansionBudget.for_compressed_size(10, ratio=2, floor=0).limit == 20


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a tar archive at all" * 40,
        make_tar(("file", "big", bytes(100_000))).getvalue()[:50_000],  # truncated mid-file
        b"\x00" * 100 + b"\xff" * 412 + b"\x00" * 1024,  # a header full of garbage
    ],
)
def test_a_broken_tar_is_a_one_line_error(box, data):
    target, _ = box
    with pytest.raises(OccystrapError):
        apply_layer(io.BytesIO(data), target)


def test_names_too_long_or_too_deep_are_skipped(box):
    target, _ = box
    deep = "/".join(["d"] * (MAX_DEPTH + 1)) + "/f"
    report = apply_layer(make_tar(("file", "x" * 5000), ("file", deep, b"x")), target)
    assert len(report.unsafe) == 2
    assert not (target / "d").exists()


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tiny") as mountpoint:
        yield mountpoint


def test_a_full_disk_stops_the_expansion_with_a_one_line_error(tiny_filesystem):
    target = tiny_filesystem / "rootfs"
    target.mkdir()
    layer = make_tar(("file", "small", b"ok"), ("file", "big", os.urandom(2 * 1024 * 1024)))
    with pytest.raises(FilesystemError, match="no space left") as raised:
        apply_layer(layer, target)
    assert str(target) in str(raised.value)


# -- property: whatever the layers hold, nothing outside changes; failures are ours -------

_COMPONENTS = st.sampled_from(
    ["a", "link", "secret", "..", ".", "", ".wh..", ".wh...", ".wh.a", ".wh.link", ".wh..wh..opq"]
)
_NAMES = st.lists(_COMPONENTS, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/etc/evil", "../outside/secret", "a" * 5000]
)
_LINK_TARGETS = st.sampled_from(
    ["/", "..", "../..", "../outside", "../outside/secret", "/etc/passwd", "a", "link", "."]
)
_MEMBERS = st.one_of(
    st.tuples(st.just("file"), _NAMES, st.binary(max_size=64), st.sampled_from([0o644, 0o4755])),
    st.tuples(st.just("dir"), _NAMES, st.none(), st.sampled_from([0o755, 0o2755, 0o555])),
    st.tuples(st.just("symlink"), _NAMES, _LINK_TARGETS),
    st.tuples(st.just("hardlink"), _NAMES, _LINK_TARGETS | _NAMES),
    st.tuples(st.just("chardev"), _NAMES),
    st.tuples(st.just("fifo"), _NAMES),
)
_LAYER = st.tuples(
    st.lists(_MEMBERS, min_size=1, max_size=8), st.none() | st.integers(min_value=0, max_value=4000)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(_LAYER, min_size=1, max_size=3), limit=st.integers(1000, 20_000))
def test_property_hostile_layers_stay_inside_and_fail_as_occystrap_errors(layers, limit):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        target = root / "staging" / "rootfs"
        target.mkdir(parents=True)
        (root / "outside").mkdir()
        (root / "outside" / "secret").write_bytes(b"keep me")
        outside_before = snapshot(root / "outside"), sorted(os.listdir(root))
        staging_before = sorted(os.listdir(root / "staging"))
        passwd_links = Path("/etc/passwd").stat().st_nlink
        budget = ExpansionBudget(limit)
        for members, truncate_at in layers:
            data = make_tar(*members).getvalue()
            if truncate_at is not None:
                data = data[:truncate_at]
            # A refusal is fine; any other exception fails the test (a traceback for users).
            with contextlib.suppress(OccystrapError):
                apply_layer(io.BytesIO(data), target, budget=budget)
        assert (snapshot(root / "outside"), sorted(os.listdir(root))) == outside_before
        assert sorted(os.listdir(root / "staging")) == staging_before
        assert Path("/etc/passwd").stat().st_nlink == passwd_links
        assert not Path("/etc/evil").exists()
        for dirpath, dirnames, filenames in os.walk(target):
            for name in dirnames + filenames:
                mode = os.lstat(Path(dirpath) / name).st_mode
                assert not mode & (stat.S_ISUID | stat.S_ISGID), name
                assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)), name


@pytest.mark.parametrize(
    "text, expected",
    [("123", 123), ("4K", 4096), ("512M", 512 * 1024**2), ("20G", 20 * GIB), ("2GiB", 2 * GIB)],
)
def test_parse_byte_size(text, expected):
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "lots", "1.5G", "5X", "G"])
def test_parse_byte_size_refuses_non_sizes(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size(text)


def test_expand_policy_budget():
    assert ExpandPolicy().budget_for(10 * GIB).limit == 200 * GIB
    assert ExpandPolicy(max_bytes=5).budget_for(10 * GIB).limit == 5
