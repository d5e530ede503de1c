"""Write files and trees so a failure part way through leaves nothing half-written behind."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

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


def replace_path(source: Path, final: Path) -> None:
    """Move `source` onto `final`; an existing directory at `final` is swapped out, then removed."""
    if final.is_dir() and not final.is_symlink():
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
