"""The one thing every byte stream in the pipeline offers: `read(size)`."""

from __future__ import annotations

from typing import Protocol

# The piece every stream is read and written in: few, large system calls and Python steps.
CHUNK_SIZE = 1024 * 1024


class Readable(Protocol):
    """A stream read front to back: files, verifying readers, registry bodies."""

    def read(self, size: int = -1, /) -> bytes: ...
