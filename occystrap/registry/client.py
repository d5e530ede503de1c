"""The Registry V2 protocol over the assembled client: manifests, blobs, uploads.

Nothing here handles auth, retries, mirrors or rate limits: the chain does.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import httpx

from occystrap.digests import check_digest
from occystrap.errors import DigestMismatchError, RegistryError
from occystrap.middleware import extensions
from occystrap.registry.blobs import (
    RemoteBlobReader,
    ReopeningBody,
)
from occystrap.registry.errors import registry_error
from occystrap.registry.manifest import ACCEPT_MANIFESTS
from occystrap.streams import Readable

LOG = logging.getLogger("occystrap.registry")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
UPLOAD_ATTEMPTS = 3
PATCH_CHUNK = 16 * 1024 * 1024


class RegistryClient:
    """One registry (`host[:port]`), spoken to through the run's single httpx client."""

    def __init__(
        self,
        http: httpx.Client,
        registry: str,
        *,
        insecure: bool = False,
        on_download: Callable[[int], None] | None = None,
    ) -> None:
        """`on_download` hears the size of every blob chunk streamed from this registry."""
        self.http = http
        self.registry = registry
        self.on_download = on_download
        self.base = f"{'http' if insecure else 'https'}://{registry}"

    def _url(self, repository: str, kind: str, reference: str = "") -> str:
        return f"{self.base}/v2/{repository}/{kind}/{reference}"

    # -- manifests -------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, content type, digest) of a manifest; digest-pinned references are checked."""
        what = (
            f"manifest {repository}:{reference}"
            if ":" not in reference
            else (f"manifest {repository}@{reference}")
        )
        response = self.http.get(
            self._url(repository, "manifests", reference),
            headers={"Accept": ACCEPT_MANIFESTS},
            extensions={extensions.BUFFER: MAX_MANIFEST_BYTES},
        )
        if response.status_code != 200:
            raise registry_error(response, what)
        raw = response.content
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if ":" in reference:  # a digest; tags cannot contain ':'
            check_digest(raw, reference, what)
        return raw, content_type, "sha256:" + hashlib.sha256(raw).hexdigest()

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        response = self.http.put(
            self._url(repository, "manifests", reference),
            content=raw,
            headers={"Content-Type": media_type},
        )
        if response.status_code not in (200, 201):
            raise registry_error(response, f"pushing manifest {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest", "")

    # -- blobs -----------------------------------------------------------------------------

    def read_blob(self, repository: str, digest: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (an image config) in memory, verified.

        Bytes failing the digest are fetched again: without the mirror that served them, or,
        from the origin, once.
        """
        what = f"blob {digest} of {repository}"
        skip_mirrors: set[str] = set()
        refetched_from_origin = False
        while True:
            response = self.http.get(
                self._url(repository, "blobs", digest),
                extensions={
                    extensions.BUFFER: limit,
                    extensions.SKIP_MIRRORS: frozenset(skip_mirrors),
                },
            )
            if response.status_code != 200:
                raise registry_error(response, what)
            try:
                check_digest(response.content, digest, what)
                return response.content
            except DigestMismatchError as exc:
                served_by = response.extensions.get(extensions.SERVED_BY)
                if served_by is None and refetched_from_origin:
                    raise
                LOG.info("%s; fetching it again", exc)
                if served_by is None:
                    refetched_from_origin = True
                else:
                    skip_mirrors.add(served_by)

    def open_blob(self, repository: str, digest: str) -> RemoteBlobReader:
        """A blob as a resumable stream; the caller verifies it (see `image.Layer`)."""
        what = f"blob {digest} of {self.registry}/{repository}"
        url = self._url(repository, "blobs", digest)
        return RemoteBlobReader(self.http, url, what, on_bytes=self.on_download)

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self.http.head(self._url(repository, "blobs", digest))
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise registry_error(response, f"checking blob {digest} in {repository}")

    # -- uploads ---------------------------------------------------------------------------

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Cross-repository mount; True when the registry linked the blob without an upload."""
        response = self.http.post(
            f"{self.base}/v2/{repository}/blobs/uploads/",
            params={"mount": digest, "from": source},
            extensions={
                extensions.SCOPE: [f"repository:{source}:pull"],
                extensions.RETRY_UNSAFE: True,
            },
        )
        response.close()
        if response.status_code == 201:
            return True
        if response.status_code == 202:
            # Mount refused but an upload session was opened: cancel it, we open our own.
            location = response.headers.get("Location")
            if location:
                self.http.delete(self._location(location)).close()
            return False
        LOG.debug("mount of %s from %s answered %d", digest, source, response.status_code)
        return False

    def upload_blob(
        self,
        repository: str,
        digest: str,
        opener: Callable[[], AbstractContextManager[Readable]],
        size: int,
        on_bytes: Callable[[int], None] = lambda n: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        """POST a session, then one streamed PUT (chunked PATCHes when the registry wants them).

        `opener` opens the blob's bytes afresh for each attempt (a file, or the source
        registry's stream, verified as it is read).

        A failed upload restarts in a fresh session: a half-written session cannot be trusted.
        """
        what = f"uploading blob {digest} to {repository}"
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            location = self._start_upload(repository, what)
            try:
                self._put_whole(location, digest, opener, size, on_bytes, what)
                return
            except _NeedsChunks:
                location = self._start_upload(repository, what)
                self._patch_chunks(location, digest, opener, on_bytes, what)
                return
            except (httpx.TransportError, RegistryError) as exc:
                if attempt == UPLOAD_ATTEMPTS:
                    raise
                LOG.info("%s failed (%s); restarting in a new session", what, exc)
                on_restart()

    def _start_upload(self, repository: str, what: str) -> str:
        response = self.http.post(
            f"{self.base}/v2/{repository}/blobs/uploads/",
            extensions={extensions.RETRY_UNSAFE: True},
        )
        if response.status_code != 202 or "Location" not in response.headers:
            raise registry_error(response, what)
        response.close()
        return self._location(response.headers["Location"])

    def _location(self, location: str) -> str:
        return str(httpx.URL(self.base).join(location))

    def _put_whole(self, location, digest, opener, size, on_bytes, what) -> None:
        response = self.http.put(
            httpx.URL(location).copy_merge_params({"digest": digest}),
            content=ReopeningBody(opener, on_bytes),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            extensions={extensions.REPLAYABLE: True},
        )
        if response.status_code in (201, 204):
            return
        if response.status_code in (405, 416):
            response.close()
            raise _NeedsChunks()
        raise registry_error(response, what)

    def _patch_chunks(self, location, digest, opener, on_bytes, what) -> None:
        offset = 0
        with opener() as source:
            while chunk := source.read(PATCH_CHUNK):
                response = self.http.patch(
                    location,
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                )
                if response.status_code != 202:
                    raise registry_error(response, what)
                response.close()
                location = self._location(response.headers.get("Location", location))
                offset += len(chunk)
                on_bytes(len(chunk))
        response = self.http.put(httpx.URL(location).copy_merge_params({"digest": digest}))
        if response.status_code not in (201, 204):
            raise registry_error(response, what)


class _NeedsChunks(Exception):
    """The registry refused a monolithic PUT."""


@dataclass(frozen=True)
class RegistryBlob:
    """A blob that lives in a registry repository (the `Blob` of a layer read from one)."""

    client: RegistryClient
    repository: str
    digest: str

    @property
    def registry(self) -> str:
        return self.client.registry

    local = False

    def __str__(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    @contextmanager
    def open(self) -> Iterator[Readable]:
        reader = self.client.open_blob(self.repository, self.digest)
        try:
            yield reader
        finally:
            reader.close()
