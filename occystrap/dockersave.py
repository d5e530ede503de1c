"""The `docker save` layout, read and written in one place.

Reading works over any `MemberSource` (a seekable tarball, a directory, a spooled stream):
both the classic layout (`manifest.json`, `<id>/layer.tar`) and the OCI layout Docker 25+
writes (`index.json`, `blobs/sha256/...`). Layers are not copied: each becomes a `Layer`
whose blob points into the source, verified whenever it is read.

Writing streams to any file object: the small files first, then every distinct layer
uncompressed as `<diff-id-hex>/layer.tar`, in the order an output's layer iterator hands
them over, so a layer can be written while later ones are still being fetched.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from occystrap import compression
from occystrap.archive import MemberSource, member_key, name_and_tag
from occystrap.cancel import Cancellation
from occystrap.digests import hash_of, new_hasher, sha256_digest
from occystrap.errors import DigestMismatchError, OccystrapError, UsageError
from occystrap.image import Blob, Image, Layer, SourceName
from occystrap.jsondoc import BadJSONError, parse_json
from occystrap.limits import METADATA_LIMIT
from occystrap.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
from occystrap.pipeline import ProgressSink, again_if_corrupt
from occystrap.prefetch import read_ahead, unspooled
from occystrap.registry.hosts import DOCKER_HUB_HOST
from occystrap.streams import Readable

LOG = logging.getLogger("occystrap.dockersave")

_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_MAX_INDEX_DOCUMENTS = 64
LAYER_DIR_VERSION = b"1.0"
LEGACY_TIMESTAMP = "1970-01-01T00:00:00Z"


def _named_digest(member_name: str) -> str | None:
    """The digest an OCI-layout path like `blobs/sha256/<hex>` asserts for its content."""
    match = _BLOB_NAME.fullmatch(member_key(member_name))
    return f"sha256:{match.group(1)}" if match else None


def repo_tags(entry: dict) -> list[str]:
    """The `RepoTags` of a manifest.json entry; anything but a list of strings counts as none."""
    tags = entry.get("RepoTags")
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def describe_entries(entries: list[dict]) -> str:
    """The images of a manifest.json, numbered as `@N` picks them: "@0 a:1, @1 (untagged)"."""
    return ", ".join(
        f"@{number} {' '.join(repo_tags(entry)) or '(untagged)'}"
        for number, entry in enumerate(entries)
    )


def repo_tag_of(source: SourceName) -> str | None:
    """The tag docker would show: `busybox:latest` for Hub library images, else `host/name:tag`."""
    if source.tag is None:
        return None
    name = source.repository
    if source.registry in (None, DOCKER_HUB_HOST):
        name = name.removeprefix("library/")
    else:
        name = f"{source.registry}/{name}"
    return f"{name}:{source.tag}"


# -- reading ------------------------------------------------------------------------------


def _hash_blob(blob: Blob) -> str:
    hasher = new_hasher("sha256:")
    with blob.open() as stream:
        while chunk := stream.read(compression.CHUNK_SIZE):
            hasher.update(chunk)
    return hash_of(hasher)


class DockerSaveReader:
    """Reads one image of a docker-save tree (the first, or the one tagged `wanted`)."""

    def __init__(self, members: MemberSource) -> None:
        self.members = members

    def _fail(self, what: str) -> OccystrapError:
        return OccystrapError(f"{self.members.where}: {what}")

    def _small(self, name: Any, what: str) -> bytes:
        key = member_key(name) if isinstance(name, str) else None
        if key is None or not self.members.has(key):
            raise self._fail(
                f"{what} {name!r} is missing from the archive; it is incomplete or not a"
                " docker save or OCI archive"
            )
        if self.members.size(key) > METADATA_LIMIT:
            raise self._fail(f"{what} {name!r} is implausibly large")
        data = self.members.read(key)
        named = _named_digest(key)
        if named and sha256_digest(data) != named:
            raise DigestMismatchError(
                f"{self.members.where}: {what} {name!r} hashes to {sha256_digest(data)};"
                " the archive is corrupt"
            )
        return data

    def _json(self, name: Any, what: str) -> Any:
        return self._parsed(self._small(name, what), f"{what} {name!r}")

    def _parsed(self, data: bytes, what: str) -> Any:
        try:
            return parse_json(data, what)
        except BadJSONError as error:
            raise self._fail(str(error)) from None

    def entries(self) -> list[dict]:
        """The images `manifest.json` lists."""
        entries = self._json("manifest.json", "manifest")
        if not isinstance(entries, list) or not entries:
            raise self._fail("manifest.json lists no images")
        if not all(isinstance(entry, dict) for entry in entries):
            raise self._fail("manifest.json is not a list of objects")
        return entries

    def read(self, wanted: str | None = None, position: int | None = None) -> Image:
        """The image tagged `wanted`, else the one at `position` in manifest.json, else the
        first."""
        entries = self.entries()
        if wanted is not None:
            entry = self._entry_tagged(entries, wanted)
        elif position is not None:
            if position >= len(entries):
                raise UsageError(
                    f"{self.members.where} holds {len(entries)} image(s), so it has no @{position}"
                    f" (they are numbered from 0): {describe_entries(entries)}"
                )
            entry = entries[position]
        else:
            entry = entries[0]
        config = self._small(entry.get("Config"), "config")
        document = self._parsed(config, f"config {entry.get('Config')!r}")
        if not isinstance(document, dict):
            raise self._fail(f"config {entry.get('Config')!r} is not a JSON object")
        rootfs = document.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if diff_ids is None:
            raise self._fail(f"config {entry.get('Config')!r} has no diff_ids")
        layer_names = entry.get("Layers")
        if (
            not isinstance(diff_ids, list)
            or not all(isinstance(d, str) and d.startswith("sha256:") for d in diff_ids)
            or not isinstance(layer_names, list)
            or not all(isinstance(name, str) for name in layer_names)
        ):
            raise self._fail("manifest.json Layers or the config's diff_ids are malformed")
        if len(layer_names) != len(diff_ids):
            raise self._fail(
                f"manifest.json lists {len(layer_names)} layers but the config has"
                f" {len(diff_ids)}; the archive is inconsistent"
            )
        oci = self._oci_manifest(sha256_digest(config), len(layer_names))
        descriptors: list[Any] = oci[1]["layers"] if oci else [None] * len(layer_names)
        history = [
            h.get("created_by", "")
            for h in (document.get("history") or [])
            if isinstance(h, dict) and not h.get("empty_layer")
        ]
        history += [""] * (len(layer_names) - len(history))
        layers = tuple(
            self._layer(name, diff_id, descriptor, created_by)
            for name, diff_id, descriptor, created_by in zip(
                layer_names, diff_ids, descriptors, history, strict=False
            )
        )
        source = SourceName()
        tags = repo_tags(entry)
        if tags:
            try:
                source = name_and_tag(tags[0])
            except UsageError:
                LOG.warning("ignoring unparseable RepoTag %r in %s", tags[0], self.members.where)
        if oci:
            media_type = oci[1].get("mediaType", OCI_MANIFEST)
            return Image(source, config, layers, oci[0], media_type)
        zstd = any(layer.compression == compression.ZSTD for layer in layers)
        return Image(source, config, layers, None, OCI_MANIFEST if zstd else DOCKER_MANIFEST)

    def _entry_tagged(self, entries: list[dict], wanted: str) -> dict:
        for entry in entries:
            if wanted in repo_tags(entry):
                return entry
        tags = [tag for entry in entries for tag in repo_tags(entry)]
        raise UsageError(
            f"{self.members.where} holds no image tagged {wanted!r}; it has:"
            f" {', '.join(tags) or 'only untagged images'}"
        )

    def _oci_manifest(self, config_digest: str, layer_count: int) -> tuple[bytes, dict] | None:
        """The OCI manifest (bytes, parsed) for this config, when the archive has an index."""
        if not self.members.has("index.json"):
            return None
        index = self._json("index.json", "index")
        pending = list(index.get("manifests") or []) if isinstance(index, dict) else []
        for _ in range(_MAX_INDEX_DOCUMENTS):
            if not pending:
                break
            descriptor = pending.pop(0)
            digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
            if not isinstance(digest, str) or not digest.startswith("sha256:"):
                continue
            blob_name = f"blobs/{digest.replace(':', '/', 1)}"
            if not self.members.has(member_key(blob_name)):
                continue  # other platforms may be left out of the archive
            data = self._small(blob_name, "manifest")
            try:
                document = parse_json(data)
            except ValueError:
                raise self._fail(f"manifest {blob_name!r} is not JSON") from None
            if not isinstance(document, dict):
                continue
            if isinstance(document.get("manifests"), list):
                pending.extend(document["manifests"])
            elif (
                (document.get("config") or {}).get("digest") == config_digest
                and len(document.get("layers") or []) == layer_count
                and all(
                    isinstance(layer, dict) and isinstance(layer.get("digest"), str)
                    for layer in document["layers"]
                )
            ):
                return data, document
        return None

    def _layer(self, name: str, diff_id: str, descriptor: Any, created_by: str) -> Layer:
        key = member_key(name)
        if not self.members.has(key):
            raise self._fail(
                f"layer {name!r} is missing from the archive; it is incomplete or not a"
                " docker save archive"
            )
        blob = self.members.blob(key)
        size = self.members.size(key)
        if descriptor and isinstance(descriptor.get("size"), int):
            size = descriptor["size"]  # what the manifest promises; checked as it is read
        with blob.open() as stream:
            kind = compression.detect(stream.read(4))
        digest = descriptor["digest"] if descriptor else _named_digest(key)
        if digest is None:
            # Classic layouts name no blob digest: an uncompressed layer's is its diff_id
            # (checked as it is read); a compressed one must be hashed to be named at all.
            digest = diff_id if kind == compression.NONE else _hash_blob(blob)
        media_type = (descriptor or {}).get("mediaType") or compression.media_type_for(
            kind, oci=kind == compression.ZSTD
        )
        return Layer(
            digest=digest,
            size=size,
            media_type=media_type,
            diff_id=diff_id,
            blob=blob,
            uncompressed_size=size if kind == compression.NONE else None,
            created_by=created_by,
        )


# -- writing ------------------------------------------------------------------------------


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


@dataclass(frozen=True)
class LayerEntry:
    """One distinct layer of the image, stored under `directory`."""

    directory: str
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
    config: bytes
    manifest_entry: dict
    layers: dict[str, LayerEntry]  # by diff_id, distinct, in image order
    repositories: dict

    @classmethod
    def of(cls, image: Image, repo_tag: str | None) -> DockerSaveLayout:
        config_name = f"{_hex(image.config_digest)}.json"
        entries: dict[str, LayerEntry] = {}
        parent = None
        for layer in image.layers:
            directory = _hex(layer.diff_id)
            if layer.diff_id not in entries:
                legacy = {"id": directory, "created": LEGACY_TIMESTAMP}
                if parent:
                    legacy["parent"] = parent
                entries[layer.diff_id] = LayerEntry(directory, json.dumps(legacy).encode())
            parent = directory
        repositories = {}
        if repo_tag and parent:
            name, _, tag = repo_tag.rpartition(":")
            repositories = {name: {tag: parent}}
        return cls(
            config_name=config_name,
            config=image.config,
            manifest_entry={
                "Config": config_name,
                "RepoTags": [repo_tag] if repo_tag else [],
                "Layers": [f"{_hex(layer.diff_id)}/layer.tar" for layer in image.layers],
            },
            layers=entries,
            repositories=repositories,
        )

    def metadata_files(self) -> list[tuple[str, bytes]]:
        """(name, bytes) of every small file: per-layer files, config, manifest, repositories."""
        files = [item for entry in self.layers.values() for item in entry.metadata_files()]
        files.append((self.config_name, self.config))
        files.append(("manifest.json", json.dumps([self.manifest_entry]).encode()))
        if self.repositories:
            files.append(("repositories", json.dumps(self.repositories).encode()))
        return files


def tar_member_info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


def write_docker_save(
    out: BinaryIO,
    image: Image,
    repo_tag: str | None,
    layers: Iterator[Layer],
    progress: ProgressSink,
    cancellation: Cancellation,
) -> int:
    """Stream `image` as a docker-save tarball into `out` (stopping when `cancellation`,
    the run's, is cancelled); return the bytes of its blobs as stored (the config and each
    distinct layer tar), what the run's summary counts as written.

    `layers` yields the image's layers in order; each distinct layer is written once, as it
    arrives. On a seekable `out` a layer streams straight in (its member's size is filled in
    afterwards), so it may come from anywhere (see `prefetch.prefetched_layers`); otherwise
    each must know its `uncompressed_size` (see `pipeline.local_layers`).
    """
    layout = DockerSaveLayout.of(image, repo_tag)
    archive = _TarWriter(out)
    for entry in layout.layers.values():
        archive.add(tar_member_info(entry.directory, 0, directory=True))
    for name, data in layout.metadata_files():
        archive.add(tar_member_info(name, len(data)), data)
    stored = len(image.config)
    written: set[str] = set()
    for layer in layers:
        if layer.diff_id in written:
            continue
        written.add(layer.diff_id)
        tar_name = layout.layers[layer.diff_id].tar_name
        stored += _add_layer(archive, tar_name, layer, progress, cancellation)
    archive.close()
    return stored


def _add_layer(
    archive: _TarWriter,
    name: str,
    layer: Layer,
    progress: ProgressSink,
    cancellation: Cancellation,
) -> int:
    """Add the layer's tar as member `name`; return its size."""
    key = f"write:{layer.diff_id}"
    size = layer.uncompressed_size
    progress.start(key, size, _hex(layer.diff_id)[:12])
    if not archive.seekable:
        if size is None:
            raise ValueError("write_docker_save needs each layer's uncompressed size")
        stored = _copy_layer(archive, name, layer, progress, key, cancellation)
    else:
        # A layer that failed its digest on the way gets one more try, fetched directly.
        attempts = iter([layer, unspooled(layer)])
        start = archive.position
        stored = again_if_corrupt(
            layer,
            lambda: _copy_layer(
                archive.rewind(start), name, next(attempts), progress, key, cancellation
            ),
        )
    progress.finish(key)
    return stored


def _copy_layer(
    archive: _TarWriter,
    name: str,
    layer: Layer,
    progress: ProgressSink,
    key: str,
    cancellation: Cancellation,
) -> int:
    progress.restart(key, 0)
    # Inflating (in a read-ahead thread) overlaps hashing the tar and writing it (here).
    with layer.open_tar(inflating=lambda tar: read_ahead(tar, cancellation)) as stream:
        try:
            return archive.add_stream(
                tar_member_info(name, 0),
                stream,
                layer.uncompressed_size,
                lambda n: progress.advance(key, n),
            )
        except _SizeChanged:
            raise _size_changed(layer, layer.uncompressed_size or 0) from None


def _size_changed(layer: Layer, size: int) -> OccystrapError:
    return OccystrapError(
        f"layer {layer.digest} is not {size} bytes uncompressed as expected: its source changed"
        " or is corrupt; fetch the image again"
    )


class _SizeChanged(Exception):
    pass


class _TarWriter:
    """Writes a tar archive member by member, as `tarfile` writes it in PAX format (same
    bytes), with one addition: on a seekable output a member of unknown size streams in and
    its header's size is filled in once the data has ended."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        try:
            self.position = out.tell()
            self.seekable = out.seekable()
        except (AttributeError, OSError):
            self.position, self.seekable = 0, False

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.position += len(data)

    def _pad(self, size: int) -> None:
        if size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def _header(self, info: tarfile.TarInfo) -> bytes:
        """Write `info`'s header blocks; return the last, the ustar header proper."""
        blocks = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        self._write(blocks)
        return blocks[-tarfile.BLOCKSIZE :]

    def add(self, info: tarfile.TarInfo, data: bytes = b"") -> None:
        info.size = len(data)
        self._header(info)
        self._write(data)
        self._pad(len(data))

    def rewind(self, position: int) -> _TarWriter:
        """Drop everything written from `position` on (a member being written again)."""
        if position != self.position:
            self._out.seek(position)
            self._out.truncate()
            self.position = position
        return self

    def add_stream(
        self,
        info: tarfile.TarInfo,
        source: Readable,
        size: int | None,
        on_bytes: Callable[[int], None],
    ) -> int:
        """A member whose data is `source` to its end: `size` bytes, or when None (on a
        seekable output only) however many there are; return how many there were."""
        if size is None and not self.seekable:
            raise ValueError("a tar member of unknown size needs a seekable output")
        info.size = size or 0
        header = self._header(info)
        header_at = self.position - tarfile.BLOCKSIZE
        count = 0
        while chunk := source.read(compression.CHUNK_SIZE):
            count += len(chunk)
            if size is not None and count > size:
                raise _SizeChanged()
            self._write(chunk)
            on_bytes(len(chunk))
        if size is not None and count != size:
            raise _SizeChanged()
        self._pad(count)
        if size is None:
            self._fill_in_size(header_at, header, count)
        return count

    def _fill_in_size(self, header_at: int, written: bytes, size: int) -> None:
        """Rewrite the size field (and checksum) of the ustar header at `header_at`; past
        ustar's 8 GiB the base-256 form tarfile, GNU tar and Go read (PAX would need a
        header before this one)."""
        if size < 8**11:
            field = b"%011o" % size + tarfile.NUL
        else:
            field = b"\x80" + size.to_bytes(11, "big")
        header = bytearray(written)
        header[124:136] = field
        header[148:156] = b" " * 8
        header[148:156] = b"%06o" % sum(header) + tarfile.NUL + b" "
        self._out.seek(header_at)
        self._out.write(header)
        self._out.seek(self.position)

    def close(self) -> None:
        """The end-of-archive blocks, padded to tarfile's record size."""
        self._write(tarfile.NUL * (tarfile.BLOCKSIZE * 2))
        if self.position % tarfile.RECORDSIZE:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - self.position % tarfile.RECORDSIZE))
