"""Write an image as a `docker save` tarball that docker, podman and skopeo load.

The layout (shared with the directory output): `manifest.json`, the config as
`<config-hex>.json`, and every layer uncompressed as `<diff-id-hex>/layer.tar`
with the `VERSION` and `json` files docker writes beside it, plus `repositories`.
"""

from __future__ import annotations

import io
import json
import queue
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from occystrap.atomic import CHUNK_SIZE, atomic_file
from occystrap.errors import OccystrapError
from occystrap.pipeline import Image, Layer, ProgressSink
from occystrap.registry.hosts import DOCKER_HUB_HOST

LAYER_DIR_VERSION = b"1.0"
LEGACY_TIMESTAMP = "1970-01-01T00:00:00Z"


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


def default_repo_tag(image: Image) -> str | None:
    """The tag docker would show: `busybox:latest` for Hub library images, else `host/name:tag`."""
    if image.tag is None:
        return None
    registry = image.extra.get("registry")
    name = image.name
    if registry in (None, DOCKER_HUB_HOST):
        name = name.removeprefix("library/")
    else:
        name = f"{registry}/{name}"
    return f"{name}:{image.tag}"


@dataclass(frozen=True)
class LayerEntry:
    """One distinct layer of the image, stored under `directory`."""

    directory: str
    layer: Layer
    legacy_json: bytes

    @property
    def tar_name(self) -> str:
        return f"{self.directory}/layer.tar"

    def metadata_files(self) -> list[tuple[str, bytes]]:
        """The small files docker keeps beside each layer.tar."""
        return [
            (f"{self.directory}/VERSION", LAYER_DIR_VERSION),
            (f"{self.directory}/json", self.legacy_json),
        ]


@dataclass(frozen=True)
class DockerSaveLayout:
    """Everything but the layer bytes of one image's `docker save` tree."""

    config_name: str
    manifest_entry: dict
    layers: list[LayerEntry]  # distinct, in image order
    repositories: dict

    @classmethod
    def of(cls, image: Image, repo_tag: str | None) -> DockerSaveLayout:
        config_name = f"{_hex(image.config_digest)}.json"
        entries: dict[str, LayerEntry] = {}
        parent = None
        for layer in image.layers:
            directory = _hex(layer.diff_id)
            if directory not in entries:
                legacy = {"id": directory, "created": LEGACY_TIMESTAMP}
                if parent:
                    legacy["parent"] = parent
                entries[directory] = LayerEntry(directory, layer, json.dumps(legacy).encode())
            parent = directory
        tags = [repo_tag] if repo_tag else []
        repositories = {}
        if repo_tag and parent:
            name, _, tag = repo_tag.rpartition(":")
            repositories = {name: {tag: parent}}
        return cls(
            config_name=config_name,
            manifest_entry={
                "Config": config_name,
                "RepoTags": tags,
                "Layers": [f"{_hex(layer.diff_id)}/layer.tar" for layer in image.layers],
            },
            layers=list(entries.values()),
            repositories=repositories,
        )

    def metadata_files(self, image: Image) -> list[tuple[str, bytes]]:
        """(name, bytes) of every small file: per-layer files, config, manifest, repositories."""
        files = [item for entry in self.layers for item in entry.metadata_files()]
        files.append((self.config_name, image.config))
        files.append(("manifest.json", json.dumps([self.manifest_entry]).encode()))
        if self.repositories:
            files.append(("repositories", json.dumps(self.repositories).encode()))
        return files


class _CountingReader:
    """Reads through `source`, reporting bytes to the progress sink."""

    def __init__(self, source: BinaryIO, progress: ProgressSink, key: str) -> None:
        self.source = source
        self.progress = progress
        self.key = key
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        self.progress.advance(self.key, len(data))
        return data


def uncompressed_size(layer: Layer) -> int:
    """The layer's tar size: known from the input, or counted by one streaming pass."""
    if layer.uncompressed_size is not None:
        return layer.uncompressed_size
    total = 0
    with layer.open_tar() as stream:
        while chunk := stream.read(CHUNK_SIZE):
            total += len(chunk)
    return total


class _ReadAhead:
    """Reads `source` in a thread, a few chunks ahead of the caller.

    Decompression (zlib, zstd) and file writes both release the GIL, so inflating the next
    chunks overlaps writing the previous ones. At most `depth` chunks are held at once.
    """

    def __init__(self, source: BinaryIO, depth: int = 4) -> None:
        self._source = source
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="read-ahead", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._source.read(CHUNK_SIZE)
                self._chunks.put(chunk)
                if not chunk:
                    return
        except BaseException as error:  # handed to the reading thread, which raises it
            self._chunks.put(error)

    def _next_chunk(self) -> None:
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._eof = not item
        self._pending = memoryview(item)

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._pending:
                if self._eof:
                    break
                self._next_chunk()
                continue
            wanted = len(self._pending) if size < 0 else size - len(out)
            out += self._pending[:wanted]
            self._pending = self._pending[wanted:]
        return bytes(out)

    def close(self) -> None:
        """Stop the reader thread before the source it reads from is closed."""
        self._stop.set()
        while self._thread.is_alive():
            with suppress(queue.Empty):
                self._chunks.get(timeout=0.05)
        self._thread.join()


@contextmanager
def reporting_layer_stream(
    layer: Layer, progress: ProgressSink, total: int | None
) -> Iterator[_CountingReader]:
    """The layer's tar stream, read ahead in a thread, reporting progress under its diff_id."""
    key = layer.diff_id
    progress.start(key, total, _hex(layer.diff_id)[:12])
    with layer.open_tar() as stream:
        ahead = _ReadAhead(stream)
        try:
            yield _CountingReader(ahead, progress, key)
        finally:
            ahead.close()
    progress.finish(key)


def _tar_info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


class TarballOutput:
    """Writes one image to `path` as a docker-loadable tarball, atomically."""

    def __init__(self, path: Path, repo_tag: str | None = None) -> None:
        self.path = Path(path)
        self.repo_tag = repo_tag

    def write(self, image: Image, progress: ProgressSink) -> None:
        layout = DockerSaveLayout.of(image, self.repo_tag or default_repo_tag(image))
        with (
            atomic_file(self.path) as handle,
            tarfile.open(
                fileobj=handle, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK_SIZE
            ) as archive,
        ):
            for entry in layout.layers:
                archive.addfile(_tar_info(entry.directory, 0, directory=True))
            for name, data in layout.metadata_files(image):
                archive.addfile(_tar_info(name, len(data)), io.BytesIO(data))
            for entry in layout.layers:
                self._add_layer(archive, entry, progress)

    @staticmethod
    def _add_layer(archive: tarfile.TarFile, entry: LayerEntry, progress: ProgressSink) -> None:
        size = uncompressed_size(entry.layer)
        with reporting_layer_stream(entry.layer, progress, size) as stream:
            try:
                archive.addfile(_tar_info(entry.tar_name, size), stream)
            except OSError as error:
                if stream.count >= size:
                    raise
                raise _size_changed(entry.layer, size) from error
            if stream.read(1):
                raise _size_changed(entry.layer, size)


def _size_changed(layer: Layer, size: int) -> OccystrapError:
    return OccystrapError(
        f"layer {layer.digest} is not {size} bytes uncompressed as expected: its file in the "
        "work directory changed or is corrupt; fetch the image again"
    )
