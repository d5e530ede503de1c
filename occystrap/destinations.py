"""Checks run on a destination before anything is downloaded, so nothing is destroyed.

A destination may only replace an earlier occystrap output of the same kind:

- a file destination (tar://) may replace a regular file, atomically, but never a directory;
- a directory destination (dir://) may be new, empty, or an earlier occystrap directory
  output, which it recognises by the marker file the directory output writes
  (`MARKER_NAME`); a catalogue shared by many images (unique_names) is only written with
  unique_names again;
- a directory written whole and renamed into place (oci://, mounts://) may be new, empty,
  or an earlier output of the same scheme, recognised by the same marker file.

Problems with the parent (missing, a file, not writable, read-only) are reported in one line
naming the path, before any network traffic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from occystrap.atomic import atomic_file, atomic_path
from occystrap.errors import FilesystemError
from occystrap.jsondoc import parse_json

MARKER_NAME = ".occystrap"
# Directory outputs written before the marker existed always held this lock file.
LEGACY_LOCK_NAME = ".occystrap.lock"
MARKER_FORMAT = "occystrap-dir"


def write_directory_marker(directory: Path, unique_names: bool) -> None:
    """Mark `directory` as a directory output, so a later run may write into it again."""
    document = {"format": MARKER_FORMAT, "version": 1, "unique_names": unique_names}
    with atomic_file(directory / MARKER_NAME) as handle:
        handle.write(json.dumps(document).encode())


def _marker(directory: Path) -> dict[str, Any]:
    """The marker an occystrap output left in `directory` (empty if none)."""
    try:
        marker = parse_json((directory / MARKER_NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def earlier_output_kind(directory: Path) -> str | None:
    """ "catalogue" or "single" if `directory` is an earlier occystrap directory output."""
    marker = _marker(directory)
    if marker.get("format") == MARKER_FORMAT:
        return "catalogue" if marker.get("unique_names") else "single"
    if (directory / LEGACY_LOCK_NAME).is_file():
        try:
            manifest = parse_json((directory / "manifest.json").read_bytes())
        except (OSError, ValueError):
            return None
        if isinstance(manifest, list):
            return "catalogue" if len(manifest) > 1 else "single"
    return None


def _require_writable_directory(directory: Path, what: str) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        reason = "is on a read-only filesystem" if read_only else "is not writable"
        raise FilesystemError(f"{directory}: {what} {reason}; choose another destination")


def _require_creatable(path: Path) -> None:
    """A missing `path` can be made: its nearest existing ancestor is a writable directory."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FilesystemError(f"{ancestor}: is a file, so {path} cannot be created")
    _require_writable_directory(ancestor, "the directory to create the destination in")


def check_file_destination(path: Path, overwrite: bool = False) -> Path:
    """Refuse, before any download, a file destination that cannot be written safely; the
    path to write (a symlink's target, so the link itself stays).

    Nothing occystrap did not write is replaced unasked: an existing file needs `overwrite`,
    and a device, FIFO or socket (or a symlink to one, as /dev/stdout is) is never replaced.
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise FilesystemError(
            f"{path}: is a directory; name a file to write, e.g. {path / 'image.tar'}"
        )
    shown = path
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if os.path.lexists(path) and not path.is_file():
        raise FilesystemError(
            f"{shown}: exists and is not a regular file (a device, FIFO or socket) and is never"
            " replaced; name a new file, or write to stdout with tar://-"
        )
    if os.path.lexists(path) and not overwrite:
        raise FilesystemError(
            f"{shown}: already exists; add ?overwrite=true to the URI (or --force) to replace it"
        )
    parent = path.parent
    if not parent.exists():
        raise FilesystemError(f"{parent}: the destination's directory does not exist; create it")
    if not parent.is_dir():
        raise FilesystemError(f"{parent}: is not a directory, so {path.name} cannot go in it")
    _require_writable_directory(parent, "the destination's directory")
    return path


def check_directory(path: Path, scheme: str) -> bool:
    """What every directory destination needs: a new one must be creatable (False is
    returned), an existing one must be a writable directory (True is returned)."""
    path = Path(os.path.abspath(path))
    if not path.exists():
        _require_creatable(path)
        return False
    if not path.is_dir():
        raise FilesystemError(f"{path}: is a file; {scheme}:// needs a directory (or a new name)")
    _require_writable_directory(path, "the destination")
    return True


def check_directory_destination(path: Path, allow_catalogue: bool) -> None:
    """Refuse, before any download, a directory destination that holds something else.

    `allow_catalogue` is the destination's unique_names: only then may it add to a catalogue.
    """
    if not check_directory(path, "dir"):
        return
    path = Path(os.path.abspath(path))
    if os.listdir(path):
        kind = earlier_output_kind(path)
        if kind is None:
            raise FilesystemError(
                f"{path}: is not empty and is not an earlier occystrap directory output;"
                " choose a new or empty directory"
            )
        if kind == "catalogue" and not allow_catalogue:
            raise FilesystemError(
                f"{path}: holds a catalogue of several images; add ?unique_names=true to add"
                " this image to it"
            )


def _whole_output_format(scheme: str) -> str:
    return f"occystrap-{scheme}"


def check_whole_directory_destination(path: Path, scheme: str) -> None:
    """Refuse, before any download, a directory a `scheme` output would replace whole unless
    it is new, empty, or an earlier output of that scheme (oci://, mounts://)."""
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        _require_creatable(path)
        return
    if not path.is_dir() or path.is_symlink():
        raise FilesystemError(f"{path}: is not a directory; {scheme}:// needs a new directory")
    if os.path.ismount(path):
        raise FilesystemError(
            f"{path}: is a mount point, which cannot be replaced by renaming; name a directory"
            f" inside it, e.g. {path / 'image'}"
        )
    if os.listdir(path) and _marker(path).get("format") != _whole_output_format(scheme):
        raise FilesystemError(
            f"{path}: is not empty and is not an earlier occystrap {scheme}:// output;"
            " choose a new or empty directory"
        )
    _require_writable_directory(path.parent, "the destination's directory")


@contextmanager
def staged_whole_directory(path: Path, scheme: str) -> Iterator[Path]:
    """An empty directory next to `path`, marked as a `scheme` output, that replaces `path`
    once the block completes; if the block fails it vanishes and `path` is left as it was."""
    check_whole_directory_destination(path, scheme)  # again: the place may have changed
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging:
        staging.mkdir()
        marker = {"format": _whole_output_format(scheme), "version": 1}
        (staging / MARKER_NAME).write_text(json.dumps(marker))
        yield staging
