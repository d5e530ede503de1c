"""The image pipeline: an input yields an `Image`, filters transform it, an output consumes it.

Inputs fetch every layer into a verified local file under a work directory
(in parallel, streamed, digest-checked), so outputs and filters never touch
the network and never hold a layer in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from occystrap import compression


@dataclass
class Layer:
    """One layer blob, already fetched and verified, stored at `path`."""

    digest: str  # sha256:... of the blob as stored (compressed bytes)
    size: int  # bytes of the blob as stored
    media_type: str
    diff_id: str  # sha256:... of the uncompressed tar, from the image config
    path: Path
    uncompressed_size: int | None = None
    created_by: str = ""

    @property
    def compression(self) -> str:
        return compression.from_media_type(self.media_type)

    def open_blob(self) -> BinaryIO:
        return open(self.path, "rb")

    @contextmanager
    def open_tar(self) -> Iterator[BinaryIO]:
        """The layer's uncompressed tar stream."""
        with (
            open(self.path, "rb") as raw,
            compression.decompressing_reader(raw, self.compression) as tar_stream,
        ):
            yield tar_stream


@dataclass
class Image:
    """An image ready for an output: its config and its fetched layers."""

    name: str  # repository path, e.g. "library/busybox"
    tag: str | None
    config: bytes  # the config blob, byte for byte
    config_digest: str
    layers: list[Layer]
    manifest_media_type: str
    # The manifest as the source had it, when it is known to match `layers`;
    # outputs pushing it unchanged keep the image's digest.
    manifest: bytes | None = None
    extra: dict = field(default_factory=dict)

    @property
    def config_json(self) -> dict:
        return json.loads(self.config)


class ImageInput(Protocol):
    def fetch(self, workdir: Path, progress: ProgressSink) -> Image:
        """Fetch the image's config and every layer (verified) into `workdir`."""


class ImageOutput(Protocol):
    def write(self, image: Image, progress: ProgressSink) -> None:
        """Write the image; on failure leave nothing half-written."""


class ImageFilter(Protocol):
    def apply(self, image: Image, workdir: Path) -> Image:
        """Return the transformed image (new layers go under `workdir`)."""


class ProgressSink(Protocol):
    """Where inputs and outputs report bytes moved; the CLI draws it."""

    def start(self, key: str, total: int | None, label: str) -> None: ...
    def advance(self, key: str, nbytes: int) -> None: ...
    def restart(self, key: str, completed: int) -> None: ...
    def finish(self, key: str) -> None: ...


class NullProgress:
    """Progress that goes nowhere: for library use and tests."""

    def start(self, key: str, total: int | None, label: str) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def restart(self, key: str, completed: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass
