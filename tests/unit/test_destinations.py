"""Destinations are checked before any download and never destroy what they do not own."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from occystrap.atomic import atomic_file, replace_path
from occystrap.destinations import (
    LEGACY_LOCK_NAME,
    MARKER_NAME,
    check_directory_destination,
    check_file_destination,
    earlier_output_kind,
    write_directory_marker,
)
from occystrap.errors import FilesystemError
from tests.tmpfs import mounted_tmpfs


def _precious_directory(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


def test_atomic_file_never_replaces_a_directory(tmp_path):
    precious = _precious_directory(tmp_path / "out.tar")
    with pytest.raises(FilesystemError, match="is a directory"), atomic_file(precious) as handle:
        handle.write(b"image")
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert os.listdir(tmp_path) == ["out.tar"]  # the partial file is gone too


def test_replace_path_swaps_a_directory_for_a_directory(tmp_path):
    old, new = tmp_path / "rootfs", tmp_path / "new"
    old.mkdir()
    (old / "stale").write_text("x")
    new.mkdir()
    (new / "fresh").write_text("y")
    replace_path(new, old)
    assert os.listdir(old) == ["fresh"]
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]


def test_atomic_file_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.tar"
    target.write_bytes(b"old")
    with atomic_file(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize(
    "setup, fragment",
    [
        (lambda p: _precious_directory(p), "is a directory"),
        (lambda p: None, None),
        (lambda p: p.write_bytes(b"an older tarball"), "already exists.*overwrite=true"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.symlink_to("/dev/null"), "not a regular file"),
        (
            lambda p: (os.mkfifo(p.with_suffix(".fifo")), p.symlink_to(p.with_suffix(".fifo"))),
            "not a regular file",
        ),  # fmt: skip
    ],
)
def test_check_file_destination(tmp_path, setup, fragment):
    path = tmp_path / "out.tar"
    setup(path)
    if fragment is None:
        assert check_file_destination(path) == path
    else:
        with pytest.raises(FilesystemError, match=fragment):
            check_file_destination(path)


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "out.tar"
    path.write_bytes(b"an older tarball")
    assert check_file_destination(path, overwrite=True) == path
    link = tmp_path / "link.tar"
    link.symlink_to(path)
    assert check_file_destination(link, overwrite=True) == path  # the link itself stays


def test_a_device_is_never_replaced_even_when_asked(tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")
    with pytest.raises(FilesystemError, match="never replaced.*tar://-"):
        check_file_destination(link, overwrite=True)
    with pytest.raises(FilesystemError, match="never replaced"):
        check_file_destination(Path("/dev/null"), overwrite=True)


def test_check_file_destination_parent_missing_or_a_file(tmp_path):
    with pytest.raises(FilesystemError, match="does not exist") as raised:
        check_file_destination(tmp_path / "missing" / "out.tar")
    assert str(tmp_path / "missing") in str(raised.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FilesystemError, match="is not a directory"):
        check_file_destination(tmp_path / "afile" / "out.tar")


def test_check_file_destination_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_file_destination(Path("out.tar"))


@pytest.fixture
def read_only_directory(tmp_path: Path) -> Iterator[Path]:
    """A real read-only mount: root ignores permission bits but not a read-only filesystem."""
    with mounted_tmpfs(tmp_path / "ro", size="64k", read_only=True) as directory:
        yield directory


def test_unwritable_parents_are_refused(read_only_directory):
    with pytest.raises(FilesystemError, match="read-only|not writable"):
        check_file_destination(read_only_directory / "out.tar")
    with pytest.raises(FilesystemError, match="read-only|not writable"):
        check_directory_destination(read_only_directory / "new" / "dir", allow_catalogue=False)
    with pytest.raises(FilesystemError, match="read-only|not writable"):
        check_directory_destination(read_only_directory, allow_catalogue=False)


def test_directory_destination_new_empty_or_missing_parents_are_fine(tmp_path):
    check_directory_destination(tmp_path / "a" / "b" / "c", allow_catalogue=False)
    (tmp_path / "empty").mkdir()
    check_directory_destination(tmp_path / "empty", allow_catalogue=True)


def test_directory_destination_refuses_a_file_or_a_path_through_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FilesystemError, match="is a file"):
        check_directory_destination(tmp_path / "afile", allow_catalogue=False)
    with pytest.raises(FilesystemError, match="is a file"):
        check_directory_destination(tmp_path / "afile" / "sub", allow_catalogue=False)


@pytest.mark.parametrize("allow_catalogue", [False, True])
def test_directory_destination_refuses_a_directory_holding_something_else(
    tmp_path, allow_catalogue
):
    precious = _precious_directory(tmp_path / "home")
    with pytest.raises(FilesystemError, match="not an earlier occystrap"):
        check_directory_destination(precious, allow_catalogue=allow_catalogue)


@pytest.mark.parametrize("unique_names", [False, True])
def test_a_marked_directory_may_be_written_again(tmp_path, unique_names):
    out = _precious_directory(tmp_path / "out")
    write_directory_marker(out, unique_names)
    assert earlier_output_kind(out) == ("catalogue" if unique_names else "single")
    check_directory_destination(out, allow_catalogue=True)
    if unique_names:
        with pytest.raises(FilesystemError, match="unique_names=true"):
            check_directory_destination(out, allow_catalogue=False)
    else:
        check_directory_destination(out, allow_catalogue=False)


def test_outputs_from_before_the_marker_are_recognised_by_their_lock_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEGACY_LOCK_NAME).touch()
    (out / "manifest.json").write_text(json.dumps([{"Config": "a"}]))
    assert earlier_output_kind(out) == "single"
    (out / "manifest.json").write_text(json.dumps([{"Config": "a"}, {"Config": "b"}]))
    assert earlier_output_kind(out) == "catalogue"


def test_a_forged_or_broken_marker_is_not_an_output(tmp_path):
    out = _precious_directory(tmp_path / "out")
    (out / MARKER_NAME).write_text("not json")
    assert earlier_output_kind(out) is None
    (out / MARKER_NAME).write_text(json.dumps({"format": "something-else"}))
    assert earlier_output_kind(out) is None
    write_directory_marker(out, unique_names=False)
    assert earlier_output_kind(out) == "single"
