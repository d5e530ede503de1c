"""The OCI image layout (`oci-layout`, `index.json`, `blobs/<algorithm>/<hex>`), read and
written in one place.

Reading works over any `MemberSource`: a layout directory (skopeo's `oci:`, crane, regctl,
buildah, umoci) or a tarball of one (skopeo's `oci-archive:`). `index.json` names images by
their `org.opencontainers.image.ref.name` annotation; an entry may be an image manifest or
an index, which becomes an `ImageIndex` like a registry's. Layers stay where they are, read
and verified only when an output needs them.

Writing stores blobs exactly as they come, so a manifest (or index) keeps its digest; blobs
already present are not written again, so many images share one layout, and `index.json`
is replaced atomically under a lock, last, once everything it points at is in place.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from occystrap.archive import MemberSource, name_and_tag
from occystrap.atomic import atomic_file, locked, partial_sibling
from occystrap.cancel import cancellable_pool
from occystrap.destinations import check_directory
from occystrap.digests import check_digest, hash_of, new_hasher, sha256_digest
from occystrap.errors import (
    DigestMismatchError,
    FilesystemError,
    OccystrapError,
    UsageError,
    writing_to,
)
from occystrap.graph import Node, StoreSource, put_missing_blobs
from occystrap.image import (
    Blob,
    Image,
    ImageIndex,
    ImageLike,
    Layer,
    SourceName,
    image_from_manifest,
)
from occystrap.jsondoc import parse_json
from occystrap.limits import METADATA_LIMIT
from occystrap.manifest import (
    Descriptor,
    MalformedManifestError,
    Manifest,
    ManifestIndex,
    PlatformDescriptor,
    build_manifest,
    descriptor_json,
    empty_index,
    parse_manifest,
)
from occystrap.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST
from occystrap.pipeline import RunContext, again_if_corrupt
from occystrap.registry.referrers import REFERRERS_TAG, names_referrers
from occystrap.streams import CHUNK_SIZE, Readable

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
DEFAULT_TAG = "latest"
_BLOB_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")
# A ref.name that is only a tag (what skopeo and crane write), not a whole reference.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

LOG = logging.getLogger("occystrap.ocilayout")


def blob_name(digest: str) -> str | None:
    """`blobs/<algorithm>/<hex>` for a well-formed sha256 or sha512 digest, else None."""
    match = _BLOB_DIGEST.fullmatch(digest)
    if match is None:
        return None
    algorithm, encoded = digest.split(":")
    return f"blobs/{algorithm}/{encoded}"


def is_referrers_tag(name: str | None) -> bool:
    """Whether a ref.name tags what refers to an image (a signature, an SBOM index), which
    is kept beside the image but is not one to choose."""
    return name is not None and REFERRERS_TAG.fullmatch(name) is not None


def is_oci_layout(members: MemberSource) -> bool:
    return members.has(INDEX_FILE) and members.has(LAYOUT_FILE)


def ref_name(descriptor: Descriptor) -> str | None:
    return descriptor.annotations.get(REF_NAME)


def source_name(ref: str | None) -> SourceName:
    """The name outputs give the image: the tag alone, or the reference a ref.name spells."""
    if ref is None:
        return SourceName()
    if _TAG.fullmatch(ref):
        return SourceName(tag=ref)
    try:
        return name_and_tag(ref)
    except UsageError:
        return SourceName()


def parse_index(raw: bytes, where: str) -> list[PlatformDescriptor]:
    """The entries of an `index.json`; any defect is a one-line `OccystrapError`."""
    try:
        parsed = parse_manifest(raw, OCI_INDEX)
    except MalformedManifestError as error:
        raise OccystrapError(
            f"{where}: {INDEX_FILE} is not a valid image index ({error.what}); the layout is"
            " damaged, write it again"
        ) from None
    except OccystrapError as error:
        raise OccystrapError(f"{where}: {INDEX_FILE}: {error}") from None
    if not isinstance(parsed, ManifestIndex):
        raise OccystrapError(f"{where}: {INDEX_FILE} is an image manifest, not an image index")
    return parsed.manifests


def tagged_entry(raw_index: bytes, tag: str, where: str) -> PlatformDescriptor | None:
    """The entry an `index.json` names `tag` (the last one, should a tool have left more)."""
    tagged = [entry for entry in parse_index(raw_index, where) if ref_name(entry) == tag]
    return tagged[-1] if tagged else None


def image_tags(entries: Iterable[Descriptor]) -> dict[str, str]:
    """Tag -> digest of the entries that name images (not some digest's referrers), the
    last one winning as when a tag is read."""
    return {
        name: entry.digest
        for entry in entries
        if (name := ref_name(entry)) is not None and not names_referrers(name)
    }


class OciLayoutReader:
    """Reads the image (or index) one entry of a layout's `index.json` names."""

    def __init__(
        self, members: MemberSource, how_to_choose: str = "pick one with ?tag=TAG"
    ) -> None:
        self.members = members
        self.where = members.where
        self.how_to_choose = how_to_choose  # said when the layout holds several images

    def _fail(self, what: str) -> OccystrapError:
        return OccystrapError(f"{self.where}: {what}")

    def _small(self, name: str, what: str) -> bytes:
        if not self.members.has(name):
            raise self._fail(f"{what} {name!r} is missing; the layout is incomplete")
        if self.members.size(name) > METADATA_LIMIT:
            raise self._fail(f"{what} {name!r} is implausibly large")
        return self.members.read(name)

    def _blob_key(self, descriptor: Descriptor, what: str) -> str:
        name = blob_name(descriptor.digest)
        if name is None:
            raise self._fail(
                f"{what} digest {descriptor.digest!r} is not a sha256 or sha512 digest; the"
                " layout is damaged"
            )
        if not self.members.has(name):
            raise self._fail(
                f"{what} {descriptor.digest} is missing from the layout; it is incomplete"
            )
        return name

    def _small_blob(self, descriptor: Descriptor, what: str) -> bytes:
        data = self._small(self._blob_key(descriptor, what), what)
        if len(data) != descriptor.size:
            raise DigestMismatchError(
                f"{self.where}: {what} {descriptor.digest} is {len(data)} bytes, not the"
                f" {descriptor.size} its descriptor says; the layout is corrupt"
            )
        check_digest(data, descriptor.digest, f"{self.where}: {what}")
        return data

    def _document(self, descriptor: Descriptor, what: str) -> Manifest | ManifestIndex:
        raw = self._small_blob(descriptor, what)
        try:
            return parse_manifest(raw, descriptor.media_type)
        except MalformedManifestError as error:
            raise self._fail(f"{what} {descriptor.digest} is malformed: {error.what}") from None
        except OccystrapError as error:
            raise self._fail(f"{what} {descriptor.digest}: {error}") from None

    def entries(self) -> list[PlatformDescriptor]:
        """What `index.json` lists, after checking the `oci-layout` marker."""
        try:
            marker = parse_json(self._small(LAYOUT_FILE, "layout marker"), LAYOUT_FILE)
        except ValueError:
            marker = None
        version = marker.get("imageLayoutVersion") if isinstance(marker, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise self._fail(
                f"{LAYOUT_FILE} does not declare image layout version 1.x; this is not an OCI"
                " image layout occystrap can read"
            )
        return parse_index(self._small(INDEX_FILE, "index"), self.where)

    def select(self, tag: str | None) -> PlatformDescriptor:
        """The entry tagged `tag`, or the only entry when no tag is asked for."""
        entries = self.entries()
        if not entries:
            raise self._fail("the layout holds no image (index.json lists nothing)")
        tags = [name for name in map(ref_name, entries) if name is not None]
        untagged = len(entries) - len(tags)
        listing = ", ".join(tags) + (f" and {untagged} untagged" if untagged else "")
        if tag is None:
            images = [entry for entry in entries if not is_referrers_tag(ref_name(entry))]
            if len(images) == 1:
                return images[0]
            raise UsageError(
                f"{self.where} holds {len(images)} images; {self.how_to_choose} ({listing})"
            )
        matching = [entry for entry in entries if ref_name(entry) == tag]
        if len(matching) == 1:
            return matching[0]
        if matching:
            raise self._fail(f"{len(matching)} entries of index.json are tagged {tag!r}")
        raise UsageError(f"{self.where} holds no image tagged {tag!r}; it has: {listing}")

    def read(self, tag: str | None = None) -> ImageLike:
        entry = self.select(tag)
        source = source_name(ref_name(entry))
        document = self._document(entry, "manifest")
        if isinstance(document, Manifest):
            return self._image(document, source)
        return ImageIndex(
            source,
            document.raw,
            document.media_type,
            tuple(document.manifests),
            lambda platform_entry: self._entry_image(platform_entry, source),
        )

    def _entry_image(self, entry: PlatformDescriptor, source: SourceName) -> Image:
        document = self._document(entry, "manifest")
        if isinstance(document, ManifestIndex):
            raise self._fail(f"index entry {entry.digest} is itself an index; not supported")
        return self._image(document, source)

    def _image(self, manifest: Manifest, source: SourceName) -> Image:
        config = self._small_blob(manifest.config, "config")
        return image_from_manifest(source, manifest, config, self._layer_blob, self.where)

    def _layer_blob(self, descriptor: Descriptor) -> Blob:
        return self.members.blob(self._blob_key(descriptor, "layer"))

    def manifests(self, tag: str | None = None) -> StoreSource:
        """The graph copy's view of the entry tagged `tag`: manifests and blobs as stored."""
        entry = self.select(tag)
        return StoreSource(LayoutStore(self), entry, source_name(ref_name(entry)))


class LayoutStore:
    """An OCI image layout (a directory, an OCI archive, a bucket's `BucketLayout`) as a
    `occystrap.graph.Store`; tags are `index.json`'s ref.names. Without a writer it is
    read only."""

    def __init__(self, reader: OciLayoutReader, writer: OciLayoutWriter | None = None) -> None:
        self.reader, self.members, self.writer = reader, reader.members, writer

    @classmethod
    def writing(
        cls, members: MemberSource, storage: LayoutStorage | Path, ctx: RunContext
    ) -> LayoutStore:
        """The layout `members` reads and `storage` writes (the same place)."""
        return cls(OciLayoutReader(members), OciLayoutWriter(storage, ctx))

    def __str__(self) -> str:
        return self.members.where

    def referrers_api(self, digest: str, artifact_type: str | None) -> list[Descriptor] | None:
        return None  # a layout lists referrers only in referrers tag indexes

    def _stored(self, digest: str, size: int | None = None) -> str | None:
        """The member name of a blob the layout holds (with `size`, when given)."""
        name = blob_name(digest)
        if name is None or not self.members.has(name):
            return None
        if size is not None and self.members.size(name) != size:
            return None
        return name

    def manifest(self, descriptor: Descriptor) -> Node:
        document = self.reader._document(descriptor, "manifest")
        return Node(document.raw, document.media_type)

    def manifest_at(self, reference: str) -> tuple[bytes, str, str] | None:
        if ":" in reference:  # a digest; tags cannot contain ':'
            name = self._stored(reference)
            if name is None:
                return None
            raw = self.reader._small(name, "manifest")  # bounded, like a registry's
            check_digest(raw, reference, f"{self}: manifest {reference}")
            return raw, parse_manifest(raw, None).media_type, reference
        if not self.members.has(INDEX_FILE):
            return None
        entry = tagged_entry(self.members.read(INDEX_FILE), reference, str(self))
        if entry is None:
            return None
        found = self.manifest_at(entry.digest)
        return None if found is None else (found[0], entry.media_type, found[2])

    def blob(self, descriptor: Descriptor) -> Blob:
        return self.members.blob(self.reader._blob_key(descriptor, "blob"))

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self._stored(descriptor.digest, descriptor.size) is not None

    def _writer(self) -> OciLayoutWriter:
        if self.writer is None:
            raise OccystrapError(f"{self}: the layout is open for reading only")
        return self.writer

    def put_blob(
        self, descriptor: Descriptor, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        self._writer().store_blob(descriptor.digest, descriptor.size, opener)

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        put_missing_blobs(self, blobs)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> bool:
        tag = None if reference == sha256_digest(raw) else reference
        self._writer().store_manifest(raw, media_type, tag)
        return False


# -- writing ------------------------------------------------------------------------------


class LayoutStorage(Protocol):
    """Where a layout's files are kept: a directory, or a bucket (`occystrap.buckets`).

    Names are relative to the layout (`oci-layout`, `index.json`, `blobs/sha256/...`). A
    blob appears under its name only once written completely; `index.json` is changed by one
    writer at a time, so two writers never lose each other's entries."""

    where: str  # for messages

    def location(self, name: str) -> str:
        """One name for the file or object `name`, however the URI that reached the layout
        was written: what the writers of one run take turns on."""
        ...

    def holds_layout(self) -> bool:
        """Whether a layout is already there; refuse (one-line error) a place that is not,
        and cannot become, a layout."""
        ...

    def create_once(self, name: str, data: bytes) -> None:
        """Store `data` under `name` unless something already is there."""
        ...

    def present(self, name: str, size: int) -> bool:
        """Whether `name` is stored with `size` bytes (a wrong size is stored again)."""
        ...

    def store(
        self, name: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        """Stream `opener()`'s bytes in under `name`; nothing appears if reading fails."""
        ...

    def read_index(self) -> bytes | None:
        """`index.json` as it is now, None when there is none yet."""
        ...

    def change_index(self, change: Callable[[bytes | None], bytes]) -> None:
        """Replace `index.json` with `change(current)`, with no other writer in between."""
        ...

    def read_blob(self, name: str) -> bytes | None:
        """A small blob's bytes (a manifest, an index), None when it is not there."""
        ...

    def write_file(self, name: str, data: bytes) -> None:
        """Replace the small file `name` (the prune journal) with `data`, all at once."""
        ...

    def delete_blob(self, name: str) -> None:
        """Remove a blob (pruning) or the prune journal; one already gone is no error."""
        ...

    def abandon(self) -> None:
        """After a failed run: remove what this run created, unless something is tagged."""
        ...


def _being_created(entry: Path) -> bool:
    """What another writer creating the same layout at this moment has made so far (blobs/,
    the marker under its temporary name): not a foreign directory."""
    return entry.name == "blobs" or entry.name.startswith(f".{LAYOUT_FILE}.partial-")


class DirectoryStorage:
    """A layout directory on this machine: files renamed into place, `index.json` under a
    lock on the `oci-layout` marker."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)
        self._created: list[Path] = []  # files and directories this run made, in order

    def location(self, name: str) -> str:
        return os.path.abspath(self.path / name)

    def _make_directory(self, directory: Path) -> None:
        """`directory` and its missing parents, each remembered as this run's."""
        missing = [directory, *directory.parents]
        missing = [parent for parent in missing if not parent.exists()]
        for parent in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer made it first
                parent.mkdir()
                self._created.append(parent)

    def holds_layout(self) -> bool:
        if not check_directory(self.path, "oci-layout"):
            return False
        if (self.path / LAYOUT_FILE).exists():
            return True
        if any(not _being_created(entry) for entry in self.path.iterdir()):
            raise FilesystemError(
                f"{self.path}: is not empty and is not an OCI image layout (no {LAYOUT_FILE});"
                " choose a new or empty directory"
            )
        return False

    def create_once(self, name: str, data: bytes) -> None:
        """Created by a hard link, so a marker another writer made first is kept (it is
        what writers lock)."""
        self._make_directory(self.path / "blobs")
        final = self.path / name
        if final.exists():
            return
        temporary = partial_sibling(final)
        temporary.write_bytes(data)
        try:
            os.link(temporary, final)
            self._created.append(final)
        except FileExistsError:
            pass  # another writer created it first
        finally:
            temporary.unlink()

    def present(self, name: str, size: int) -> bool:
        """Whether `name` holds the right bytes: its size, then its digest (a same-size
        corrupt blob is not "already there"; it is written again)."""
        path = self.path / name
        try:
            if path.stat().st_size != size:
                return False
            _, algorithm, hex_digest = name.split("/")
            hasher = new_hasher(f"{algorithm}:{hex_digest}")
            with open(path, "rb") as blob:
                while chunk := blob.read(CHUNK_SIZE):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        if hash_of(hasher) != f"{algorithm}:{hex_digest}":
            LOG.warning("%s: the stored blob is corrupt; writing it again", path)
            return False
        return True

    def store(
        self, name: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        path = self.path / name
        self._make_directory(path.parent)
        with atomic_file(path) as out, opener() as source:
            shutil.copyfileobj(source, out, CHUNK_SIZE)
        self._created.append(path)

    def read_index(self) -> bytes | None:
        path = self.path / INDEX_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise OccystrapError(f"cannot read {path}: {error.strerror or error}") from None

    def change_index(self, change: Callable[[bytes | None], bytes]) -> None:
        with locked(self.path / LAYOUT_FILE):
            replacement = change(self.read_index())
            with atomic_file(self.path / INDEX_FILE) as handle:
                handle.write(replacement)

    def read_blob(self, name: str) -> bytes | None:
        path = self.path / name
        try:
            with open(path, "rb") as blob:
                data = blob.read(METADATA_LIMIT + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise OccystrapError(f"cannot read {path}: {error.strerror or error}") from None
        if len(data) > METADATA_LIMIT:
            raise OccystrapError(f"{path} is implausibly large for a manifest")
        return data

    def write_file(self, name: str, data: bytes) -> None:
        with atomic_file(self.path / name) as handle:
            handle.write(data)

    def delete_blob(self, name: str) -> None:
        path = self.path / name
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise OccystrapError(f"cannot delete {path}: {error.strerror or error}") from None

    def abandon(self) -> None:
        """Remove, newest first, the blobs, marker and directories this run created, so a
        failed first copy leaves no layout skeleton; nothing once an `index.json` exists (a
        tag may name those blobs), and no directory something else has appeared in."""
        if (self.path / INDEX_FILE).exists():
            return
        for created in reversed(self._created):
            with contextlib.suppress(OSError):
                if created.is_dir() and not created.is_symlink():
                    created.rmdir()
                else:
                    created.unlink()
        self._created.clear()


class OciLayoutWriter:
    """Writes images and indexes into a layout (a directory path, or any `LayoutStorage`),
    each under a tag."""

    def __init__(self, storage: LayoutStorage | Path, ctx: RunContext) -> None:
        self.storage = storage if not isinstance(storage, Path) else DirectoryStorage(storage)
        self.where = self.storage.where
        self.ctx = ctx

    def check(self) -> None:
        """Refuse, before anything is read, a place that is not (and cannot become) a layout:
        a file, a directory holding something else, a damaged layout, no permission."""
        if self.storage.holds_layout():
            self._index_document(self.storage.read_index())  # damaged: refused, not replaced

    def write(self, image: Image, tag: str) -> str:
        """Store `image` and tag it; return its manifest digest."""
        self.check()
        self._create()
        descriptor = self._write_image(image)
        self._tag(descriptor, tag)
        return descriptor.digest

    def store_blob(
        self, digest: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> bool:
        """Stream a blob in as it is (the opener's reader verifies it); False when present."""
        self._create()
        name = self._blob_name(digest)
        if self.storage.present(name, size):
            return False
        self.storage.store(name, size, opener)
        return True

    def store_manifest(self, raw: bytes, media_type: str, tag: str | None) -> None:
        """Store a manifest's bytes, and point `tag` at it when one is given."""
        self._create()
        digest = self._store_bytes(raw)
        if tag is not None:
            self._tag(Descriptor(media_type, digest, len(raw)), tag)

    def store_blobs(self, blobs: Sequence[Layer]) -> None:
        """Store blobs as they are (the graph copy's), each verified as it streams in."""
        self._create()
        with cancellable_pool(self.ctx.cancellation, self.ctx.settings.parallel, "store") as pool:
            list(pool.map(self._store_layer, blobs))

    # Layout and index.json.

    def _create(self) -> None:
        """The `oci-layout` marker, created once and never replaced."""
        marker = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
        self.storage.create_once(LAYOUT_FILE, marker)

    def _index_document(self, raw: bytes | None) -> dict[str, Any]:
        """`index.json`'s document (empty if none yet), checked before it is changed."""
        if raw is None:
            return empty_index()
        parse_index(raw, self.where)
        return parse_json(raw, f"{self.where}/{INDEX_FILE}")

    def _tag(self, descriptor: Descriptor, tag: str) -> None:
        """Point `tag` at `descriptor` in `index.json`, replacing its previous entry."""
        entry = descriptor_json(
            Descriptor(
                descriptor.media_type,
                descriptor.digest,
                descriptor.size,
                annotations={REF_NAME: tag},
            )
        )

        def change(raw: bytes | None) -> bytes:
            document = self._index_document(raw)
            document["manifests"] = [
                old
                for old in document["manifests"]
                if (old.get("annotations") or {}).get(REF_NAME) != tag
            ] + [entry]
            return json.dumps(document, separators=(",", ":")).encode()

        self.storage.change_index(change)

    # Blobs.

    @staticmethod
    def _blob_name(digest: str) -> str:
        name = blob_name(digest)
        if name is None:
            raise OccystrapError(
                f"cannot store blob {digest!r} in an OCI layout: only sha256 and sha512 digests"
            )
        return name

    def _turn(self, name: str, digest: str) -> AbstractContextManager[None]:
        """The one store of blob `name` that may run now: images of one run sharing a blob
        (a sync) store it once; the others wait, then find it there."""
        return self.ctx.uploads.turn(self.storage.location(name), digest)

    def _store_bytes(self, data: bytes, counted: bool = False) -> str:
        """Store a small blob; `counted` ones (configs) join the layers in the blob and byte
        counts, as in a registry copy's summary, where manifests are not blobs."""
        digest = sha256_digest(data)
        name = self._blob_name(digest)
        with self._turn(name, digest):
            if self.storage.present(name, len(data)):
                if counted:
                    LOG.info("blob %s: already in %s", digest, self.where)
                self.ctx.stats.add(skipped=int(counted))
                return digest
            self.storage.store(name, len(data), lambda: io.BytesIO(data))
        if counted:
            LOG.info("blob %s: written to %s (%d bytes)", digest, self.where, len(data))
        self.ctx.stats.add(uploaded=int(counted), bytes_uploaded=len(data) if counted else 0)
        return digest

    def _store_layer(self, layer: Layer) -> None:
        """Stream the layer's blob in as stored, verified before it takes its name."""
        name = self._blob_name(layer.digest)
        with self._turn(name, layer.digest):
            if self.storage.present(name, layer.size):
                LOG.info("blob %s: already in %s", layer.digest, self.where)
                self.ctx.stats.add(skipped=1)
                return
            progress, key = self.ctx.progress, f"write:{layer.digest}"  # a "writing" phase
            progress.start(key, layer.size, layer.label)
            advance = functools.partial(progress.advance, key)

            def store() -> None:
                progress.restart(key, 0)
                self.storage.store(name, layer.size, lambda: layer.open_blob(advance))

            again_if_corrupt(layer, store)
            progress.finish(key)
        LOG.info("blob %s: written to %s (%d bytes)", layer.digest, self.where, layer.size)
        self.ctx.stats.add(uploaded=1, bytes_uploaded=layer.size)  # once, even if fetched twice

    def _write_image(self, image: Image) -> Descriptor:
        """Store the image's layers, config and manifest; return the manifest's descriptor."""
        self.store_blobs(list({layer.digest: layer for layer in image.layers}.values()))
        self._store_bytes(image.config, counted=True)
        if image.manifest is not None:
            raw, media_type = image.manifest, image.manifest_media_type
        else:
            raw = build_manifest(
                Descriptor(OCI_CONFIG, image.config_digest, len(image.config)),
                [Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers],
                oci=True,
            )
            media_type = OCI_MANIFEST
        return Descriptor(media_type, self._store_bytes(raw), len(raw))


class LayoutDestination:
    """An output into a layout (a directory or a bucket): one image an input or a filter
    made (`write`), or a graph copied byte for byte (`put_blobs`, `put_manifest`). What it
    stores is tagged as its URI says, else by the source's tag, else `latest`."""

    def __init__(self, writer: OciLayoutWriter, tag: str | None) -> None:
        self.writer, self.tag = writer, tag

    def _tag_for(self, source: SourceName) -> str:
        return self.tag or source.tag or DEFAULT_TAG

    def write(self, item: Image) -> str:
        with writing_to(self.writer.where):
            return self.writer.write(item, self._tag_for(item.source))

    def manifest_sink(self) -> LayoutDestination:
        return self

    def abandon(self) -> None:
        self.writer.storage.abandon()

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        with writing_to(self.writer.where):
            self.writer.store_blobs(blobs)

    def put_manifest(self, node: Node, name: SourceName | None) -> None:
        tag = None if name is None else self._tag_for(name)
        with writing_to(self.writer.where):
            self.writer.store_manifest(node.raw, node.media_type, tag)
