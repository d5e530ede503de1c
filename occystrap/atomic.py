"""Write files and trees so a failure part way through leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
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


def discard_tree(path: Path) -> None:
    """Remove a tree this run made for itself (a work or staging directory), also when the
    process has run out of file descriptors: `shutil.rmtree` holds one per level, so what it
    leaves is removed bottom up listing one directory at a time, then by `rmdir`, which
    needs none (an empty directory is not left behind)."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    for root, directories, files in os.walk(path, topdown=False):
        for name in files + directories:
            entry = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(entry) and not os.path.islink(entry):
                    os.rmdir(entry)
                else:
                    os.unlink(entry)
    with contextlib.suppress(OSError):
        os.rmdir(path)


@contextmanager
def work_directory(parent: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh directory under `parent` (the system's temporary directory when None) for a
    run's own files, discarded with everything in it when the block is left."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        discard_tree(path)


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
