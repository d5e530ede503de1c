"""Write files and trees so a failure part way through leaves nothing half-written behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from occystrap.errors import FilesystemError, OccystrapError, writing_to

CHUNK_SIZE = 1024 * 1024


def partial_sibling(final: Path) -> Path:
    """A fresh hidden name next to `final`, on the same filesystem so rename is atomic."""
    return final.parent / f".{final.name}.partial-{secrets.token_hex(4)}"


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree at `path` if present, never following symlinks."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _is_real_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def replace_path(source: Path, final: Path) -> None:
    """Move `source` onto `final` atomically.

    A directory replaces an earlier directory (swapped out, then removed: callers only do
    this inside their own output, e.g. an expanded rootfs). A file never replaces a
    directory: that would destroy whatever the directory held.
    """
    if _is_real_directory(final) and not _is_real_directory(source):
        raise FilesystemError(
            f"{final}: is a directory, refusing to replace it with a file; name a file instead"
        )
    if _is_real_directory(final):
        retired = partial_sibling(final)
        os.rename(final, retired)
        os.rename(source, final)
        shutil.rmtree(retired)
    else:
        os.replace(source, final)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; it becomes `final` on success and vanishes on error.

    The caller creates whatever it likes at the yielded path (a file or a directory tree).
    """
    temporary = partial_sibling(final)
    try:
        with writing_to(final):
            yield temporary
            replace_path(temporary, final)
    except BaseException:
        remove_path(temporary)
        raise


@contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at `final` only once written completely."""
    with atomic_path(final) as temporary, open(temporary, "wb") as handle:
        yield handle


# A directory output (a runtime bundle, overlay layers) marks itself, so a later run may
# replace it while anything else stays untouched.
OUTPUT_MARKER = ".occystrap"


def check_replaceable_directory(final: Path, kind: str) -> None:
    """Refuse `final` unless it is absent, an empty directory, or an earlier `kind` output."""
    if not os.path.lexists(final):
        return
    if not final.is_dir() or final.is_symlink():
        raise OccystrapError(f"{final} exists and is not a directory; name a new directory")
    if os.path.ismount(final):
        raise OccystrapError(
            f"{final} is a mount point, which cannot be replaced by renaming; name a directory"
            f" inside it, e.g. {final / 'image'}"
        )
    if not os.listdir(final) or _output_kind(final) == kind:
        return
    raise OccystrapError(
        f"{final} is not empty and is not an earlier occystrap {kind} output;"
        " choose a new or empty directory"
    )


def _output_kind(directory: Path) -> str | None:
    try:
        marker = json.loads((directory / OUTPUT_MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    return marker.get("format") if isinstance(marker, dict) else None


@contextmanager
def staged_directory(final: Path, kind: str) -> Iterator[Path]:
    """Yield an empty directory next to `final`, marked as a `kind` output; it replaces
    `final` once the block completes, and vanishes if the block fails."""
    check_replaceable_directory(final, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as staging:
        staging.mkdir()
        (staging / OUTPUT_MARKER).write_text(json.dumps({"format": kind, "version": 1}))
        yield staging
