"""Layer compression: recognise it, undo it while streaming, and apply it deterministically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"


def from_media_type(media_type: str) -> str:
    if media_type.endswith("gzip") or media_type.endswith(".tar.gzip"):
        return GZIP
    if media_type.endswith("zstd"):
        return ZSTD
    return NONE


@contextmanager
def decompressing_reader(raw: BinaryIO, kind: str) -> Iterator[BinaryIO]:
    """A file-like reader yielding the uncompressed bytes of `raw`."""
    raise NotImplementedError  # filled in by the formats work
    yield raw
