"""Registry repositories and OCI layouts as places that keep manifests and blobs as they are.

Referrers (signatures, SBOMs) and artifacts are read and written through these two
`ReferrerStore`s, so copying them registry -> registry, registry -> oci-layout and back is one
piece of code. A registry is spoken to through the run's one client; a layout keeps referrers
the way a registry without the referrers API does: referrers tag indexes and cosign's tags as
`org.opencontainers.image.ref.name`s in `index.json`, so every manifest stays reachable.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from occystrap.archive import DirectoryMembers, MemberSource
from occystrap.buckets import BucketURI
from occystrap.cancel import cancellable_pool
from occystrap.digests import check_digest, sha256_digest
from occystrap.endpoints import Endpoint
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import RegistryError, UsageError
from occystrap.manifest import Descriptor, ManifestIndex, parse_manifest
from occystrap.middleware.builder import build_client
from occystrap.ocilayout import (
    INDEX_FILE,
    OciLayoutReader,
    OciLayoutWriter,
    blob_name,
    parse_index,
    ref_name,
)
from occystrap.pipeline import RunContext
from occystrap.registry.client import RegistryBlob, RegistryClient
from occystrap.registry.referrers import ReferrerStore, copy_referrers, discover
from occystrap.settings import RunSettings
from occystrap.streams import Readable

LOG = logging.getLogger("occystrap.stores")


class RegistryStore:
    """One repository of a registry, through the run's client."""

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client, self.repository = client, repository

    def __str__(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def referrers_api(self, digest: str, artifact_type: str | None) -> list[Descriptor] | None:
        return self.client.list_referrers(self.repository, digest, artifact_type)

    def manifest_at(self, reference: str) -> tuple[bytes, str, str] | None:
        try:
            return self.client.get_manifest(self.repository, reference)
        except RegistryError as error:
            if error.status == 404:
                return None
            raise

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self.client.blob_exists(self.repository, descriptor.digest)

    def open_blob(self, descriptor: Descriptor) -> AbstractContextManager[Readable]:
        return RegistryBlob(self.client, self.repository, descriptor.digest).open()

    def put_blob(
        self, descriptor: Descriptor, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        self.client.upload_blob(self.repository, descriptor.digest, opener, descriptor.size)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> bool:
        return self.client.put_manifest(self.repository, reference, raw, media_type).subject_indexed


class LayoutStore:
    """An OCI image layout (a directory, or a bucket's `BucketLayout`); tags are
    `index.json`'s ref.names."""

    def __init__(self, members: MemberSource, writer: OciLayoutWriter) -> None:
        self.members, self.writer = members, writer

    @classmethod
    def directory(cls, path: Path, ctx: RunContext) -> LayoutStore:
        return cls(DirectoryMembers(Path(path)), OciLayoutWriter(Path(path), ctx))

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

    def manifest_at(self, reference: str) -> tuple[bytes, str, str] | None:
        if ":" in reference:  # a digest; tags cannot contain ':'
            name = self._stored(reference)
            if name is None:
                return None
            raw = self.members.read(name)
            check_digest(raw, reference, f"{self}: manifest {reference}")
            return raw, parse_manifest(raw, None).media_type, reference
        if not self.members.has(INDEX_FILE):
            return None
        entries = parse_index(self.members.read(INDEX_FILE), str(self))
        tagged = [entry for entry in entries if ref_name(entry) == reference]
        if not tagged:
            return None
        found = self.manifest_at(tagged[-1].digest)
        return None if found is None else (found[0], tagged[-1].media_type, found[2])

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self._stored(descriptor.digest, descriptor.size) is not None

    def open_blob(self, descriptor: Descriptor) -> AbstractContextManager[Readable]:
        name = self._stored(descriptor.digest)
        if name is None:
            raise UsageError(f"{self}: blob {descriptor.digest} is missing from the layout")
        return self.members.blob(name).open()

    def put_blob(
        self, descriptor: Descriptor, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        self.writer.store_blob(descriptor.digest, descriptor.size, opener)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> bool:
        tag = None if reference == sha256_digest(raw) else reference
        self.writer.store_manifest(raw, media_type, tag)
        return False


def store_of(endpoint: Endpoint, ctx: RunContext, what: str = "--referrers") -> ReferrerStore:
    """The store a registry://, oci-layout:// or bucket endpoint names; other places keep no
    referrers or artifacts, and say so before anything is read."""
    if isinstance(endpoint, RegistryURI):
        return RegistryStore(endpoint.client(ctx), endpoint.reference.repository)
    if isinstance(endpoint, OciLayoutURI):
        return LayoutStore.directory(endpoint.path, ctx)
    if isinstance(endpoint, BucketURI):
        layout = endpoint.layout(ctx)
        return LayoutStore(layout, OciLayoutWriter(layout, ctx))
    raise UsageError(
        f"{what} needs registry://, oci-layout:// or a bucket (s3://, gs://): {endpoint}"
        " keeps no referrers or artifacts (signatures, SBOMs)"
    )


def check_referrer_ends(source: Endpoint, destination: Endpoint, ctx: RunContext) -> None:
    """Refuse `--referrers`, before anything is read, where an end keeps no referrers."""
    store_of(source, ctx)
    store_of(destination, ctx)


@contextmanager
def open_store(
    settings: RunSettings, endpoint: Endpoint, what: str, writing: bool = False
) -> Iterator[ReferrerStore]:
    """The store `endpoint` names, over a client of its own (for commands that are not a
    copy: referrers, artifact push and pull); `writing` gives it a destination's credentials
    (--dest-creds), else a source's."""
    scope = endpoint.credential_scope()
    chain = (
        settings.copy_chain_settings(None, scope)
        if writing
        else settings.copy_chain_settings(scope, None)
    )
    with (
        build_client(chain) as http,
        tempfile.TemporaryDirectory(prefix="occystrap-", dir=settings.temp_dir) as work,
    ):
        yield store_of(endpoint, RunContext(settings, http, Path(work)), what)


def reference_of(endpoint: Endpoint, store: ReferrerStore | None = None) -> str:
    """The tag or digest a registry://, oci-layout:// or bucket URI names (a layout without
    ?tag=: its only image, read from `store` when given)."""
    if isinstance(endpoint, RegistryURI):
        return endpoint.reference.reference
    assert isinstance(endpoint, (OciLayoutURI, BucketURI))
    if endpoint.tag is not None:
        return endpoint.tag
    if isinstance(store, LayoutStore):
        return OciLayoutReader(store.members).select(None).digest
    assert isinstance(endpoint, OciLayoutURI)
    return OciLayoutReader(DirectoryMembers(endpoint.path)).select(None).digest


def root_of(endpoint: Endpoint, store: ReferrerStore) -> tuple[bytes, str, str]:
    """(raw, media type, digest) of the manifest `endpoint` names."""
    reference = reference_of(endpoint, store)
    answer = store.manifest_at(reference)
    if answer is None:
        raise UsageError(f"{endpoint} holds no manifest {reference}")
    return answer


def _subjects(endpoint: Endpoint, store: ReferrerStore) -> list[str]:
    """The digests of the manifest `endpoint` names and, for an index, of its entries."""
    raw, media_type, digest = root_of(endpoint, store)
    document = parse_manifest(raw, media_type)
    entries = document.manifests if isinstance(document, ManifestIndex) else []
    return [digest, *dict.fromkeys(entry.digest for entry in entries)]


def copy_image_referrers(source: Endpoint, destination: Endpoint, ctx: RunContext) -> int:
    """Copy what refers to the image at `source` (the index and each platform manifest) to
    `destination`, recursively; only manifests the destination holds byte for byte get theirs
    (a rewritten image's signatures would not verify). Returns how many were copied."""
    source_store, destination_store = store_of(source, ctx), store_of(destination, ctx)
    subjects = [
        subject
        for subject in _subjects(source, source_store)
        if destination_store.manifest_at(subject) is not None
    ]
    with cancellable_pool(ctx.cancellation, ctx.settings.parallel, "referrers") as pool:
        trees = list(pool.map(lambda subject: discover(source_store, subject), subjects))
    copied = 0
    for subject, tree in zip(subjects, trees, strict=True):
        copied += copy_referrers(source_store, destination_store, subject, tree)
    LOG.info("%d referrers copied from %s to %s", copied, source, destination)
    return copied
