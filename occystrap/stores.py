"""The store (`occystrap.graph.Store`) an endpoint names, and the commands built on stores:
referrer copies, and what `referrers` and `artifact` open.

A registry repository is a `RegistryStore` (occystrap.registry.store), an OCI layout in a
directory or a bucket a `LayoutStore` (occystrap.ocilayout), so copying referrers registry ->
registry, registry -> oci-layout and back is one piece of code. A layout keeps referrers the
way a registry without the referrers API does: referrers tag indexes and cosign's tags as
`org.opencontainers.image.ref.name`s in `index.json`, so every manifest stays reachable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from occystrap.archive import DirectoryMembers
from occystrap.atomic import work_directory
from occystrap.buckets import BucketURI
from occystrap.cancel import cancellable_pool
from occystrap.endpoints import Endpoint
from occystrap.endpoints.oci_archive import OciArchiveDestination, OciArchiveURI
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import RegistryError, UsageError
from occystrap.graph import Store
from occystrap.manifest import ManifestIndex, parse_manifest
from occystrap.middleware.builder import build_client
from occystrap.ocilayout import LayoutStore, OciLayoutReader
from occystrap.pipeline import ImageOutput, RunContext
from occystrap.registry.referrers import copy_referrers, discover
from occystrap.settings import RunSettings

LOG = logging.getLogger("occystrap.stores")


def store_of(endpoint: Endpoint, ctx: RunContext, what: str = "--referrers") -> Store:
    """The store a registry://, oci-layout:// or bucket endpoint names; other places keep no
    referrers or artifacts, and say so before anything is read."""
    if isinstance(endpoint, RegistryURI):
        # A destination's store: blobs copied into it are mounted when the registry holds
        # them in another repository, as an image's are.
        return endpoint.open_output(ctx).store
    if isinstance(endpoint, OciLayoutURI):
        return LayoutStore.writing(DirectoryMembers(endpoint.path), endpoint.path, ctx)
    if isinstance(endpoint, BucketURI):
        layout = endpoint.layout(ctx)
        return LayoutStore.writing(layout, layout, ctx)
    archive = " (or, to write them, oci-archive://)" if what == "--referrers" else ""
    raise UsageError(
        f"{what} needs registry://, oci-layout:// or a bucket (s3://, gs://){archive}:"
        f" {endpoint} keeps no referrers or artifacts (signatures, SBOMs)"
    )


def check_referrer_ends(source: Endpoint, destination: Endpoint, ctx: RunContext) -> None:
    """Refuse `--referrers`, before anything is read, where an end keeps no referrers (an
    OCI archive's store is the layout its output stages, opened with the output)."""
    store_of(source, ctx)
    if not isinstance(destination, OciArchiveURI):
        store_of(destination, ctx)


def _destination_store(destination: Endpoint, output: ImageOutput | None, ctx: RunContext) -> Store:
    """Where referrers go: the store the destination names, or the layout an OCI archive's
    output stages (packed once they are in)."""
    if isinstance(output, OciArchiveDestination):
        return output.store()
    return store_of(destination, ctx)


@contextmanager
def open_store(
    settings: RunSettings, endpoint: Endpoint, what: str, writing: bool = False
) -> Iterator[Store]:
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
        work_directory(settings.temp_dir, "occystrap-") as work,
    ):
        yield store_of(endpoint, RunContext(settings, http, Path(work)), what)


@dataclass(frozen=True)
class OpenedSource:
    """A read's store, the endpoint it was opened for (of a short name, the search registry
    that holds the manifest) and that manifest: (raw, media type, digest)."""

    endpoint: Endpoint
    store: Store
    root: tuple[bytes, str, str]


@contextmanager
def open_source(settings: RunSettings, endpoint: Endpoint, what: str) -> Iterator[OpenedSource]:
    """The store a read (referrers, artifact pull) opens and the manifest `endpoint` names
    there; a short name with several search registries is looked for at each in turn, as
    `digest` looks (`RegistryURI.first_answer`: credentials from the command line refused,
    none holding it one line naming each registry and why)."""

    def holding(candidate: Endpoint, opened: ExitStack) -> OpenedSource:
        store = opened.enter_context(open_store(settings, candidate, what))
        return OpenedSource(candidate, store, root_of(candidate, store))

    if isinstance(endpoint, RegistryURI):
        credential = settings.source_credential is not None
        with endpoint.first_held(holding, with_credential=credential) as source:
            yield source
    else:
        with ExitStack() as opened:
            yield holding(endpoint, opened)


def named_reference(endpoint: Endpoint) -> str | None:
    """The tag or digest a registry://, oci-layout:// or bucket URI itself names (None: a
    layout's URI without ?tag=)."""
    if isinstance(endpoint, RegistryURI):
        return endpoint.reference.reference
    assert isinstance(endpoint, (OciLayoutURI, BucketURI))
    return endpoint.tag


def reference_of(endpoint: Endpoint, store: Store | None = None) -> str:
    """The tag or digest a registry://, oci-layout:// or bucket URI names (a layout without
    ?tag=: its only image, read from `store` when given)."""
    named = named_reference(endpoint)
    if named is not None:
        return named
    if isinstance(store, LayoutStore):
        return store.reader.select(None).digest
    assert isinstance(endpoint, OciLayoutURI)
    return OciLayoutReader(DirectoryMembers(endpoint.path)).select(None).digest


def root_of(endpoint: Endpoint, store: Store) -> tuple[bytes, str, str]:
    """(raw, media type, digest) of the manifest `endpoint` names."""
    reference = reference_of(endpoint, store)
    answer = store.manifest_at(reference)
    if answer is None:
        message = f"{endpoint} holds no manifest {reference}"
        if isinstance(endpoint, RegistryURI):  # the registry's 404: a search moves on
            raise RegistryError(message, status=404)
        raise UsageError(message)
    return answer


def _subjects(endpoint: Endpoint, store: Store) -> list[str]:
    """The digests of the manifest `endpoint` names and, for an index, of its entries."""
    raw, media_type, digest = root_of(endpoint, store)
    document = parse_manifest(raw, media_type)
    entries = document.manifests if isinstance(document, ManifestIndex) else []
    return [digest, *dict.fromkeys(entry.digest for entry in entries)]


def copy_image_referrers(
    source: Endpoint, destination: Endpoint, ctx: RunContext, output: ImageOutput | None = None
) -> int:
    """Copy what refers to the image at `source` (the index and each platform manifest) to
    `destination` (whose opened `output` an OCI archive stages them in), recursively; only
    manifests the destination holds byte for byte get theirs (a rewritten image's signatures
    would not verify). Returns how many were copied."""
    source_store = store_of(source, ctx)
    destination_store = _destination_store(destination, output, ctx)
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
