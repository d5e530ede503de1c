"""Copies between places that store manifests (a registry, an OCI layout), byte for byte.

The copy walks the descriptor graph by media type and interprets nothing else: an index
leads to its manifests (every entry: platforms, attestations, nested indexes), a manifest
to its config and layers, which are opaque blobs whatever their type (image layers, SBOMs,
signatures, Helm charts, types nobody has heard of). Every manifest and blob keeps its bytes
and so its digest, and each is verified against its digest as it streams. Image semantics
(tar layers, diff_ids) are for outputs that need a filesystem; see `occystrap.image`.

Such a place is a `Store` (a registry repository, `occystrap.registry.store`; an OCI layout
in a directory, an archive or a bucket, `occystrap.ocilayout`), the one interface the copy,
referrers and artifacts read and write through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from occystrap import mediatypes
from occystrap.digests import sha256_digest
from occystrap.image import Blob, Layer, SourceName
from occystrap.jsondoc import parse_json
from occystrap.manifest import (
    Descriptor,
    Manifest,
    ManifestIndex,
    Platform,
    PlatformDescriptor,
    parse_manifest,
    select_platform,
)
from occystrap.streams import Readable


@dataclass(frozen=True)
class Node:
    """One manifest or index as stored: its bytes and the media type it is stored under."""

    raw: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    def parsed(self) -> Manifest | ManifestIndex:
        return parse_manifest(self.raw, self.media_type)


class Store(Protocol):
    """A place that keeps manifests and blobs by digest, as they are: a registry repository
    or an OCI layout (a directory, an OCI archive, a bucket). The graph copy, referrers and
    artifacts all read and write through it, so each place is written once."""

    def manifest_at(self, reference: str) -> tuple[bytes, str, str] | None:
        """(raw, media type, digest) of the manifest a tag or digest names (a digest is
        verified), None when there is none."""
        ...

    def manifest(self, descriptor: Descriptor) -> Node:
        """A manifest a descriptor points at, verified; a missing one is an error."""
        ...

    def blob(self, descriptor: Descriptor) -> Blob:
        """Where a blob's bytes are (read, and verified by the caller, only when opened)."""
        ...

    def has_blob(self, descriptor: Descriptor) -> bool: ...

    def put_blob(
        self, descriptor: Descriptor, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None: ...

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        """Store each blob as it is (verified as it streams), skipping those present; a
        registry mounts one another of its repositories holds instead of uploading it."""
        ...

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> bool:
        """Store a manifest under a tag or its digest; True when the store itself now lists
        it among its subject's referrers (a registry with the referrers API)."""
        ...

    def referrers_api(self, digest: str, artifact_type: str | None) -> list[Descriptor] | None:
        """The referrers API's answer, or None where the place has no such API."""
        ...


class ManifestSource(Protocol):
    """Where manifests are stored by digest: the graph's reading side."""

    source: SourceName  # the name outputs give what is copied (its tag)
    pinned: Platform | None  # the one platform the source's URI asked for, if it did

    def root(self) -> Node:
        """The manifest or index the source's reference names."""
        ...

    def manifest(self, descriptor: Descriptor) -> Node:
        """A manifest an index lists, verified against the descriptor's digest."""
        ...

    def blob(self, descriptor: Descriptor) -> Blob:
        """Where a config's or layer's bytes are (read, and verified, only when copied)."""
        ...


class ManifestSink(Protocol):
    """Where manifests are stored by digest: the graph's writing side."""

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        """Store each blob as it is (verified as it streams), skipping those present."""
        ...

    def put_manifest(self, node: Node, name: SourceName | None) -> None:
        """Store a manifest after everything it points at. The root comes with the source's
        name (the sink tags it as its URI says, else by that name); a child (`None`) is
        stored by its digest alone."""
        ...


class StoreSource:
    """A store as the graph copy's source, rooted at one manifest it holds."""

    def __init__(self, store: Store, root: Descriptor, source: SourceName | None = None) -> None:
        self.store, self.root_descriptor = store, root
        self.source = source or SourceName()
        self.pinned: Platform | None = None  # a store names no platform

    def root(self) -> Node:
        return self.store.manifest(self.root_descriptor)

    def manifest(self, descriptor: Descriptor) -> Node:
        return self.store.manifest(descriptor)

    def blob(self, descriptor: Descriptor) -> Blob:
        return self.store.blob(descriptor)


class StoreSink:
    """A store as the graph copy's sink, blob by blob: the root under `tag` (a cosign
    tag), else its digest, like everything under it."""

    def __init__(self, store: Store, tag: str | None = None) -> None:
        self.store, self.tag = store, tag
        self.subject_indexed = False  # whether the store listed the root under its subject

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        self.store.put_blobs(blobs)

    def put_manifest(self, node: Node, name: SourceName | None) -> None:
        is_root = name is not None
        reference = self.tag if is_root and self.tag else node.digest
        indexed = self.store.put_manifest(reference, node.raw, node.media_type)
        if is_root:
            self.subject_indexed = indexed


def put_missing_blobs(store: Store, blobs: Sequence[Layer]) -> None:
    """`Store.put_blobs` for a store that can only upload: each blob it lacks, in turn."""
    for layer in blobs:
        descriptor = Descriptor(layer.media_type, layer.digest, layer.size)
        if not store.has_blob(descriptor):
            store.put_blob(descriptor, layer.open_blob)


@runtime_checkable
class ManifestInput(Protocol):
    """An input that may store manifests (a registry, a layout, an OCI archive)."""

    def manifest_source(self) -> ManifestSource | None: ...


@runtime_checkable
class ManifestOutput(Protocol):
    """An output that stores manifests (a registry, a layout)."""

    def manifest_sink(self) -> ManifestSink: ...


@dataclass(frozen=True)
class GraphCopy:
    """What a graph copy wrote: the root's digest, how many entries (an index) or blobs (a
    manifest) it has, and every manifest digest written, root last."""

    digest: str
    entries: int
    manifests: tuple[str, ...]
    # For an index: (platform, manifest digest) of each runnable entry, as it lists them.
    platforms: tuple[tuple[str, str], ...] = ()


def _attestation_subject(entry: PlatformDescriptor) -> str | None:
    if not entry.is_attestation:
        return None
    return entry.annotations.get(mediatypes.ATTESTATION_SUBJECT_ANNOTATION)


def narrowed_index(raw: bytes, index: ManifestIndex, keep: Sequence[PlatformDescriptor]) -> bytes:
    """The index with only the `keep` entries and the attestations that describe them, each
    entry as the source wrote it (the index itself is new, so is its digest)."""
    kept = {entry.digest for entry in keep}
    kept |= {entry.digest for entry in index.manifests if _attestation_subject(entry) in kept}
    document = parse_json(raw, "the index")
    document["manifests"] = [m for m in document["manifests"] if m.get("digest") in kept]
    return json.dumps(document, separators=(",", ":")).encode()


def select_platforms(
    index: ManifestIndex, platforms: Sequence[Platform]
) -> list[PlatformDescriptor]:
    """The entries for `platforms` (each must exist), once each, in the order asked."""
    chosen = [select_platform(index, p.os, p.architecture, p.variant) for p in platforms]
    return list({entry.digest: entry for entry in chosen}.values())


def _blobs_of(manifest: Manifest, source: ManifestSource) -> list[Layer]:
    """The config and layers as opaque blobs (a Layer verifies what it streams); foreign
    layers, fetched from their URLs by whoever runs them, stay where they are."""
    descriptors = [manifest.config] + [
        layer
        for layer in manifest.layers
        if mediatypes.is_distributable(layer.media_type) or not layer.urls
    ]
    unique = {d.digest: d for d in descriptors}.values()
    return [Layer(d.digest, d.size, d.media_type, d.digest, source.blob(d)) for d in unique]


class _Walk:
    def __init__(self, source: ManifestSource, sink: ManifestSink) -> None:
        self.source, self.sink = source, sink
        self.written: dict[str, None] = {}

    def copy(self, node: Node, name: SourceName | None) -> int:
        """Copy `node` and all below it; return its entries (index) or blobs (manifest)."""
        parsed = node.parsed()
        if isinstance(parsed, ManifestIndex):
            count = len(parsed.manifests)
            for entry in parsed.manifests:
                if entry.digest not in self.written:
                    self.copy(self.source.manifest(entry), None)
        else:
            blobs = _blobs_of(parsed, self.source)
            count = len(parsed.layers)
            self.sink.put_blobs(blobs)
        self.sink.put_manifest(node, name)
        self.written[node.digest] = None
        return count


def platform_root(source: ManifestSource, platforms: Sequence[Platform] = ()) -> Node:
    """What a copy of `source` writes as its root: the manifest or index as stored, or with
    `platforms` (else the platform the source pinned) of an index, that platform's manifest
    as it is, or for several an index narrowed to them (keeping their attestations)."""
    root = source.root()
    wanted = list(platforms) or ([source.pinned] if source.pinned else [])
    if not wanted:
        return root
    parsed = root.parsed()
    if not isinstance(parsed, ManifestIndex):
        return root
    keep = select_platforms(parsed, wanted)
    if len(keep) == 1:
        return source.manifest(keep[0])
    return Node(narrowed_index(root.raw, parsed, keep), root.media_type)


def copy_graph(
    source: ManifestSource, sink: ManifestSink, platforms: Sequence[Platform] = ()
) -> GraphCopy:
    """Copy what `source` names (see `platform_root`) to `sink`, byte for byte."""
    root = platform_root(source, platforms)
    walk = _Walk(source, sink)
    entries = walk.copy(root, source.source)
    parsed = root.parsed()
    written = tuple(
        (str(entry.platform), entry.digest)
        for entry in (parsed.manifests if isinstance(parsed, ManifestIndex) else ())
        if entry.platform is not None and not entry.is_attestation
    )
    return GraphCopy(root.digest, entries, tuple(walk.written), written)
