"""Write files and trees so a failure part way through leaves nothing half-written behind."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from occystrap.errors import FilesystemError, writing_to


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


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if missing) across processes, so a
    shared catalogue is read, changed and replaced by one writer at a time."""
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
