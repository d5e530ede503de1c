"""The pipeline's data model: immutable layers, images and indexes.

A `Layer` says what a layer is (digests, size, media type) and where its bytes are (a `Blob`:
a local file, a member of an archive, a registry). Reading a layer through `open_blob()` or
`open_tar()` verifies it as it streams, so every consumer checks every byte it uses.

An `Image` carries its source's manifest only while that manifest still describes its config
and layers: derivations (`with_layers`) drop it, and the constructor refuses a stale one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from occystrap import compression
from occystrap.digests import check_digest, hash_of, new_hasher, sha256_digest
from occystrap.errors import DigestMismatchError, OccystrapError
from occystrap.jsondoc import parse_json
from occystrap.manifest import Descriptor, Manifest, PlatformDescriptor, parse_manifest
from occystrap.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST, compression_of, is_config, is_layer
from occystrap.platforms import Platform
from occystrap.streams import Readable


class Blob(Protocol):
    """Where a layer's stored bytes are. `open()` streams them; the layer verifies them.

    `local` blobs are on this machine (a file, an archive member): reading them is cheap."""

    @property
    def local(self) -> bool: ...

    def open(self) -> AbstractContextManager[Readable]: ...


@dataclass(frozen=True)
class FileBlob:
    """A blob in a local file (downloaded, compressed for a push, written by a filter)."""

    path: Path
    local = True

    def __str__(self) -> str:
        return str(self.path)

    def open(self) -> AbstractContextManager[Readable]:
        return open(self.path, "rb")


class _BoundedReader:
    """Reads at most `remaining` bytes of `source` (a member inside an archive file)."""

    def __init__(self, source: Readable, remaining: int) -> None:
        self._source, self._remaining = source, remaining

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._source.read(size)
        self._remaining -= len(data)
        return data


@dataclass(frozen=True)
class ArchiveMemberBlob:
    """A blob stored inside a seekable archive (a docker-save tarball) at a byte offset."""

    archive: Path
    offset: int
    size: int
    name: str = ""  # the member's name, for messages
    local = True

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"

    @contextmanager
    def open(self) -> Iterator[Readable]:
        with open(self.archive, "rb") as handle:
            handle.seek(self.offset)
            yield _BoundedReader(handle, self.size)


class VerifyingReader:
    """Passes bytes through, hashing them; at the end checks the size and digest.

    Too many bytes fail at once, not after reading an endless body; a short or wrong stream
    fails at its end, so no consumer finishes with unverified data.
    """

    def __init__(
        self,
        source: Readable,
        digest: str,
        size: int | None,
        what: str,
        on_bytes: Callable[[int], None] | None = None,
        hashed: bool = True,
    ) -> None:
        """`hashed=False`: the source verifies the digest itself (a blob spooled by a
        download that hashed it); only the size is checked here."""
        self._source, self.digest, self.size, self.what = source, digest, size, what
        self._on_bytes = on_bytes
        self._hasher = new_hasher(digest) if hashed else None
        self.count = 0
        self._checked = False

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            if self._hasher is not None:
                self._hasher.update(data)
            self.count += len(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
            if self.size is not None and self.count > self.size:
                raise DigestMismatchError(
                    f"{self.what}: more than the {self.size} bytes its descriptor says"
                )
        elif size != 0 and not self._checked:
            self._check()
        return data

    def _check(self) -> None:
        self._checked = True
        if self._hasher is None:
            if self.size is not None and self.count != self.size:
                raise DigestMismatchError(
                    f"{self.what}: {self.count} bytes, where its descriptor says {self.size}"
                )
            return
        actual = hash_of(self._hasher)
        if self.size is not None and self.count != self.size:
            raise DigestMismatchError(
                f"{self.what}: content hashes to {actual} over {self.count} bytes, where its"
                f" descriptor says {self.digest} over {self.size}"
            )
        if actual != self.digest:
            raise DigestMismatchError(f"{self.what}: content hashes to {actual}, not {self.digest}")

    def drain(self) -> None:
        """Read to the end so the check runs (for consumers that stop at a tar's end marker)."""
        while self.read(compression.CHUNK_SIZE):
            pass


@dataclass(frozen=True)
class Layer:
    """One layer: its stored blob and, once inflated and verified, its tar on disk."""

    digest: str  # of the blob as stored
    size: int  # bytes of the blob as stored
    media_type: str
    diff_id: str  # sha256 of the uncompressed tar
    blob: Blob
    tar_path: Path | None = None  # the verified uncompressed tar, when one was kept
    uncompressed_size: int | None = None
    created_by: str = ""

    @property
    def compression(self) -> str:
        return compression_of(self.media_type)

    @property
    def label(self) -> str:
        """A short name for progress lines."""
        return self.digest.partition(":")[2][:12]

    @contextmanager
    def open_blob(self, on_bytes: Callable[[int], None] | None = None) -> Iterator[VerifyingReader]:
        """The blob's bytes, verified against `digest` and `size` as they are read;
        `on_bytes` hears how many stored bytes each read took."""
        with self.blob.open() as raw:
            what = f"layer {self.digest} from {self.blob}"
            hashed = not getattr(self.blob, "verified", False)
            reader = VerifyingReader(raw, self.digest, self.size, what, on_bytes, hashed)
            yield reader
            reader.drain()

    @contextmanager
    def open_tar(
        self,
        on_bytes: Callable[[int], None] | None = None,
        inflating: Callable[[Readable], AbstractContextManager[Readable]] | None = None,
    ) -> Iterator[BinaryIO]:
        """The layer's uncompressed tar, verified against `diff_id` (and the blob digest).

        `inflating` wraps the stream that makes the tar's bytes (the inflating one, the blob
        itself when the layer is stored uncompressed, the kept tar's file) before the diff_id
        is hashed: `prefetch.read_ahead` runs the inflate in a thread of its own while the
        hash runs in the reader's."""
        stage = inflating or nullcontext
        if self.tar_path is not None:
            with open(self.tar_path, "rb") as kept, stage(kept) as staged:
                yield staged  # type: ignore[misc]
            return
        with self.open_blob(on_bytes) as blob:
            if self.compression == compression.NONE and self.digest == self.diff_id:
                with stage(blob) as staged:
                    yield staged  # type: ignore[misc]
                return
            try:
                with (
                    compression.decompressing_reader(blob, self.compression) as tar,  # type: ignore[arg-type]
                    stage(tar) as inflated,
                ):
                    verified = VerifyingReader(
                        inflated,
                        self.diff_id,
                        self.uncompressed_size,
                        f"layer {self.digest} uncompressed",
                    )
                    yield verified  # type: ignore[misc]
                    verified.drain()
            except compression.CorruptLayerError as error:
                blob.drain()  # a blob that is not what its digest says is the clearer report
                raise compression.CorruptLayerError(f"layer {self.digest}: {error}") from None


@dataclass(frozen=True)
class SourceName:
    """Where an image came from, for naming it in outputs (`RepoTags`, catalogue entries)."""

    repository: str = "image"  # e.g. "library/busybox"
    tag: str | None = None
    registry: str | None = None  # None for Docker Hub and for sources without one

    def __str__(self) -> str:
        where = f"{self.registry}/" if self.registry else ""
        return f"{where}{self.repository}" + (f":{self.tag}" if self.tag else "")


def _manifest_matches(manifest: Manifest, config: bytes, layers: Sequence[Layer]) -> bool:
    try:
        check_digest(config, manifest.config.digest, "config")
    except (DigestMismatchError, OccystrapError):
        return False
    described = [(d.digest, d.size) for d in manifest.layers]
    return described == [(layer.digest, layer.size) for layer in layers]


@dataclass(frozen=True)
class Image:
    """A single-platform image: config bytes, layers, and the source manifest while it fits."""

    source: SourceName
    config: bytes
    layers: tuple[Layer, ...]
    manifest: bytes | None = None  # byte for byte as the source had it
    manifest_media_type: str = DOCKER_MANIFEST

    def __post_init__(self) -> None:
        if self.manifest is None:
            return
        parsed = parse_manifest(self.manifest, self.manifest_media_type)
        if not isinstance(parsed, Manifest) or not _manifest_matches(
            parsed, self.config, self.layers
        ):
            raise ValueError("the manifest given does not describe this config and these layers")

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def config_json(self) -> dict:
        document = parse_json(self.config, f"the config of {self.source}")
        if not isinstance(document, dict):
            raise OccystrapError(f"the config of {self.source} is not a JSON object")
        return document

    @property
    def is_oci(self) -> bool:
        return self.manifest_media_type == OCI_MANIFEST

    def with_layers(
        self, layers: Sequence[Layer], created_by: Sequence[str] | None = None
    ) -> Image:
        """A new image over `layers`: the config's diff_ids (and, when given, the history of
        the non-empty layers) rewritten, so its digest is new, and no source manifest.

        Layers that changed only their compression keep the config byte for byte.
        """
        config = self.config_json
        diff_ids = [layer.diff_id for layer in layers]
        rewrite = config.get("rootfs", {}).get("diff_ids") != diff_ids or created_by is not None
        if rewrite:
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            if created_by is not None:
                config["history"] = [{"created_by": text} for text in created_by]
            config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        else:
            config_bytes = self.config
        return Image(self.source, config_bytes, tuple(layers), None, self.manifest_media_type)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image: the index as served and a way to read each entry's image."""

    source: SourceName
    raw: bytes
    media_type: str
    manifests: tuple[PlatformDescriptor, ...]
    read_entry: Callable[[PlatformDescriptor], Image] = field(compare=False, repr=False)
    pinned: Platform | None = None  # the one platform the source asked for, if it did

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)


ImageLike = Image | ImageIndex


def _layer_facts(config: bytes) -> tuple[list[str], list[str]]:
    """(diff_ids, created_by of each non-empty layer) from a config, tolerating odd ones."""
    try:
        document = parse_json(config, "the config")
    except ValueError:
        return [], []
    if not isinstance(document, dict):
        return [], []
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    history = document.get("history")
    created = [
        str(h.get("created_by", ""))
        for h in (history if isinstance(history, list) else [])
        if isinstance(h, dict) and not h.get("empty_layer")
    ]
    valid = isinstance(diff_ids, list) and all(isinstance(d, str) for d in diff_ids)
    return (list(diff_ids) if valid else []), created  # type: ignore[arg-type]


class NotAnImageError(OccystrapError):
    """A manifest that is an artifact (an SBOM, a signature, a chart...) where an image is
    needed: an output that lays out a filesystem, or a filter."""


def artifact_type(manifest: Manifest) -> str | None:
    """What a manifest holds when it is not an image (None for an image): its artifactType,
    else the config or layer media type that is not an image's."""
    if manifest.artifact_type:
        return manifest.artifact_type
    if not is_config(manifest.config.media_type):
        return manifest.config.media_type
    for layer in manifest.layers:
        if not is_layer(layer.media_type):
            return layer.media_type
    return None


def require_image(manifest: Manifest, where: str) -> None:
    kind = artifact_type(manifest)
    if kind is not None:
        raise NotAnImageError(
            f"{where} is not an image but an artifact ({kind}); copy it to registry:// or"
            " oci-layout:// without filters, which keep it byte for byte"
        )


def image_from_manifest(
    source: SourceName,
    manifest: Manifest,
    config: bytes,
    blob_of: Callable[[Descriptor], Blob],
    where: str,
    error: type[OccystrapError] = OccystrapError,
) -> Image:
    """The image a manifest and its (verified) config describe, its layers' bytes found by
    `blob_of`; for any source that stores blobs by digest (a registry, an OCI layout).
    An artifact is refused: image semantics would misread its blobs."""
    require_image(manifest, where)
    diff_ids, history = _layer_facts(config)
    descriptors = manifest.layers
    if len(diff_ids) != len(descriptors):
        raise error(
            f"{where}: the manifest lists {len(descriptors)} layers but the"
            f" config has {len(diff_ids)} diff_ids; the image is corrupt"
        )
    history += [""] * (len(descriptors) - len(history))
    layers = tuple(
        Layer(
            digest=d.digest,
            size=d.size,
            media_type=d.media_type,
            diff_id=diff_id,
            blob=blob_of(d),
            created_by=created_by,
        )
        for d, diff_id, created_by in zip(descriptors, diff_ids, history, strict=False)
    )
    return Image(source, config, layers, manifest.raw, manifest.media_type)
