"""One repository of a registry as a `occystrap.graph.Store`: manifests by tag or digest,
blobs, and the referrers API, through the run's one client."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from occystrap.errors import RegistryError
from occystrap.graph import Node, put_missing_blobs
from occystrap.image import Layer
from occystrap.manifest import Descriptor, parse_manifest
from occystrap.registry.client import RegistryBlob, RegistryClient
from occystrap.streams import Readable


class RegistryStore:
    """One repository of a registry, through the run's client; `push_blobs`, a copy's
    destination's, asks for each blob first and mounts what another repository of the
    registry holds (the source's, or one the blob cache remembers) instead of uploading it."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        push_blobs: Callable[[Sequence[Layer]], None] | None = None,
    ) -> None:
        self.client, self.repository, self.push_blobs = client, repository, push_blobs

    def __str__(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def referrers_api(self, digest: str, artifact_type: str | None) -> list[Descriptor] | None:
        return self.client.list_referrers(self.repository, digest, artifact_type)

    def node(self, reference: str) -> Node:
        """A manifest as served (digest-pinned ones verified), with the type it is served as;
        a missing one is an error."""
        raw, content_type, _ = self.client.get_manifest(self.repository, reference)
        return Node(raw, parse_manifest(raw, content_type).media_type)

    def manifest(self, descriptor: Descriptor) -> Node:
        return self.node(descriptor.digest)

    def manifest_at(self, reference: str) -> tuple[bytes, str, str] | None:
        try:
            return self.client.get_manifest(self.repository, reference)
        except RegistryError as error:
            if error.status == 404:
                return None
            raise

    def blob(self, descriptor: Descriptor) -> RegistryBlob:
        return RegistryBlob(self.client, self.repository, descriptor.digest)

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self.client.blob_exists(self.repository, descriptor.digest)

    def put_blob(
        self, descriptor: Descriptor, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        self.client.upload_blob(self.repository, descriptor.digest, opener, descriptor.size)

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        if self.push_blobs is None:
            put_missing_blobs(self, blobs)
        else:
            self.push_blobs(blobs)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> bool:
        return self.client.put_manifest(self.repository, reference, raw, media_type).subject_indexed
