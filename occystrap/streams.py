"""The one thing every byte stream in the pipeline offers: `read(size)`."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    """A stream read front to back: files, verifying readers, registry bodies."""

    def read(self, size: int = -1, /) -> bytes: ...
