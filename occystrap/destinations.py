"""Checks run on a destination before anything is downloaded, so nothing is destroyed.

A destination may only replace an earlier occystrap output of the same kind:

- a file destination (tar://) may replace a regular file, atomically, but never a directory;
- a directory destination (dir://) may be new, empty, or an earlier occystrap directory
  output, which it recognises by the marker file the directory output writes
  (`MARKER_NAME`); a catalogue shared by many images (unique_names) is only written with
  unique_names again.

Problems with the parent (missing, a file, not writable, read-only) are reported in one line
naming the path, before any network traffic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from occystrap.atomic import atomic_file
from occystrap.errors import FilesystemError

MARKER_NAME = ".occystrap"
# Directory outputs written before the marker existed always held this lock file.
LEGACY_LOCK_NAME = ".occystrap.lock"
MARKER_FORMAT = "occystrap-dir"


def write_directory_marker(directory: Path, unique_names: bool) -> None:
    """Mark `directory` as a directory output, so a later run may write into it again."""
    document = {"format": MARKER_FORMAT, "version": 1, "unique_names": unique_names}
    with atomic_file(directory / MARKER_NAME) as handle:
        handle.write(json.dumps(document).encode())


def earlier_output_kind(directory: Path) -> str | None:
    """ "catalogue" or "single" if `directory` is an earlier occystrap directory output."""
    try:
        marker = json.loads((directory / MARKER_NAME).read_bytes())
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT:
        return "catalogue" if marker.get("unique_names") else "single"
    if (directory / LEGACY_LOCK_NAME).is_file():
        try:
            manifest = json.loads((directory / "manifest.json").read_bytes())
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


def check_file_destination(path: Path) -> None:
    """Refuse, before any download, a file destination that cannot be written safely."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise FilesystemError(
            f"{path}: is a directory; name a file to write, e.g. {path / 'image.tar'}"
        )
    if os.path.lexists(path) and not (path.is_symlink() or path.is_file()):
        raise FilesystemError(f"{path}: exists and is not a regular file; name another file")
    parent = path.parent
    if not parent.exists():
        raise FilesystemError(f"{parent}: the destination's directory does not exist; create it")
    if not parent.is_dir():
        raise FilesystemError(f"{parent}: is not a directory, so {path.name} cannot go in it")
    _require_writable_directory(parent, "the destination's directory")


def check_directory_destination(path: Path, allow_catalogue: bool) -> None:
    """Refuse, before any download, a directory destination that holds something else.

    `allow_catalogue` is the destination's unique_names: only then may it add to a catalogue.
    """
    path = Path(os.path.abspath(path))
    if not path.exists():
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise FilesystemError(f"{ancestor}: is a file, so {path} cannot be created")
        _require_writable_directory(ancestor, "the directory to create the destination in")
        return
    if not path.is_dir():
        raise FilesystemError(f"{path}: is a file; dir:// needs a directory (or a new name)")
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
    _require_writable_directory(path, "the destination")
