"""The Registry V2 protocol over the assembled client: manifests, blobs, uploads.

Nothing here handles auth, retries, mirrors or rate limits: the chain does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import httpx

from occystrap.cancel import Cancellation
from occystrap.digests import check_digest
from occystrap.errors import DigestMismatchError, OccystrapError, RegistryError
from occystrap.jsondoc import parse_json
from occystrap.limits import METADATA_LIMIT
from occystrap.mediatypes import ACCEPT_MANIFESTS, OCI_INDEX
from occystrap.middleware import extensions
from occystrap.registry.blobs import (
    RemoteBlobReader,
    ReopeningBody,
)
from occystrap.registry.errors import registry_error
from occystrap.streams import Readable

# The manifest parser loads when a referrers list is read, not for every registry question.
if TYPE_CHECKING:
    from occystrap.manifest import Descriptor

LOG = logging.getLogger("occystrap.registry")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_PAGES = 10_000
UPLOAD_ATTEMPTS = 3
_Sent = TypeVar("_Sent")
PATCH_CHUNK = 16 * 1024 * 1024
# Answers of a registry that will not take a PATCH of unknown length (it wants Content-Range).
_NO_STREAMED_PATCH = frozenset({400, 405, 411, 416})


class BlobInTheMaking(Protocol):
    """A blob made while it uploads (a layer compressed on the way): its bytes as they come,
    then, once they have all come, its digest and size."""

    def __iter__(self) -> Iterator[bytes]: ...

    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class ManifestHead:
    """What a HEAD on a manifest tells: its digest, media type and size (if stated)."""

    digest: str
    media_type: str
    size: int | None


@dataclass(frozen=True)
class PushedManifest:
    """What a registry answered to a manifest PUT."""

    digest: str
    # OCI-Subject was answered: the registry lists this manifest among its subject's
    # referrers itself, so no referrers tag index is needed.
    subject_indexed: bool


class RegistryClient:
    """One registry (`host[:port]`), spoken to through the run's single httpx client."""

    def __init__(
        self,
        http: httpx.Client,
        registry: str,
        *,
        insecure: bool = False,
        on_download: Callable[[int], None] | None = None,
        cancellation: Cancellation | None = None,
    ) -> None:
        """`on_download` hears the size of every blob chunk streamed from this registry;
        `cancellation` is the run's, stopping its transfers (None: a run nobody cancels)."""
        self.http = http
        self.cancellation = cancellation or Cancellation()
        self.registry = registry
        self.on_download = on_download
        self._distrusted: dict[str, set[str]] = {}  # digest -> mirrors that served it corrupt
        self._lock = threading.Lock()
        self.base = f"{'http' if insecure else 'https'}://{registry}"

    def _url(self, repository: str, kind: str, reference: str = "") -> str:
        return f"{self.base}/v2/{repository}/{kind}/{reference}"

    # -- manifests -------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, content type, digest) of a manifest; digest-pinned references are checked."""
        what = _manifest_what(repository, reference)
        url = self._url(repository, "manifests", reference)
        accept = {"Accept": ACCEPT_MANIFESTS}
        if ":" in reference:  # a digest (tags cannot contain ':'): checked, as blobs are
            response = self._get_verified(url, reference, what, MAX_MANIFEST_BYTES, accept)
        else:
            response = self.http.get(
                url, headers=accept, extensions={extensions.BUFFER: MAX_MANIFEST_BYTES}
            )
            if response.status_code != 200:
                raise registry_error(response, what)
        raw = response.content
        return raw, _content_type(response), "sha256:" + hashlib.sha256(raw).hexdigest()

    def _get_verified(
        self,
        url: str,
        digest: str,
        what: str,
        limit: int,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """GET something small its digest names, in memory, verified.

        Bytes failing the digest are fetched again: without the mirror that served them, or,
        from the origin, once.
        """
        skip_mirrors: set[str] = set()
        refetched_from_origin = False
        while True:
            response = self.http.get(
                url,
                headers=headers,
                extensions={
                    extensions.BUFFER: limit,
                    extensions.SKIP_MIRRORS: frozenset(skip_mirrors),
                },
            )
            if response.status_code != 200:
                raise registry_error(response, what)
            try:
                check_digest(response.content, digest, what)
                return response
            except DigestMismatchError as exc:
                served_by = response.extensions.get(extensions.SERVED_BY)
                if served_by is None and refetched_from_origin:
                    raise
                LOG.info("%s; fetching it again", exc)
                if served_by is None:
                    refetched_from_origin = True
                else:
                    skip_mirrors.add(served_by)

    def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        """Digest, media type and size of a manifest without fetching it.

        A registry that leaves out Docker-Content-Digest on HEAD (or answers HEAD with an error
        other than 404) is asked with GET instead, and the digest is computed from the bytes.
        """
        url = self._url(repository, "manifests", reference)
        response = self.http.head(url, headers={"Accept": ACCEPT_MANIFESTS})
        if response.status_code == 404:
            raise registry_error(response, _manifest_what(repository, reference))
        digest = response.headers.get("Docker-Content-Digest", "")
        if response.status_code == 200 and digest:
            if ":" in reference and digest != reference:
                raise RegistryError(
                    f"{self.registry} answered digest {digest} for {repository}@{reference};"
                    " the registry is broken or something in between rewrote the answer"
                )
            size = response.headers.get("Content-Length", "")
            return ManifestHead(
                digest, _content_type(response), int(size) if size.isdigit() else None
            )
        raw, content_type, digest = self.get_manifest(repository, reference)
        return ManifestHead(digest, content_type, len(raw))

    def delete_manifest(self, repository: str, digest: str) -> None:
        """DELETE a manifest by digest; a registry that forbids deletes says so in one line."""
        response = self.http.delete(
            self._url(repository, "manifests", digest),
            extensions={extensions.SCOPE: [f"repository:{repository}:delete"]},
        )
        if response.status_code in (200, 202, 204):
            response.close()
            return
        error = registry_error(response, f"deleting manifest {repository}@{digest}")
        if error.status == 405 or "UNSUPPORTED" in error.codes:
            raise RegistryError(
                f"{self.registry} does not allow deleting manifests (HTTP {error.status});"
                " its operator must enable deletes (for the CNCF registry:"
                " storage.delete.enabled: true)",
                status=error.status,
                codes=error.codes,
            )
        raise error

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """Every tag of `repository`, following `Link: <...>; rel="next"` pages.

        `page_size` is sent as `?n=`; registries may answer with fewer (or ignore it).
        """
        return [tag for page in self.tag_pages(repository, page_size) for tag in page]

    def tag_pages(self, repository: str, page_size: int | None = None) -> Iterator[list[str]]:
        """`list_tags` a page at a time, each asked for once the one before is taken: the
        first says whether the repository is there at all."""
        url = httpx.URL(self._url(repository, "tags", "list"))
        return self._name_pages(url, "tags", f"tags of {repository}", page_size)

    def list_repositories(self, page_size: int | None = None) -> list[str]:
        """Every repository the registry's catalog (`/v2/_catalog`) lists, all pages."""
        url = httpx.URL(f"{self.base}/v2/_catalog")
        pages = self._name_pages(url, "repositories", "the repository catalog", page_size)
        return [name for page in pages for name in page]

    def _name_pages(
        self, first: httpx.URL, key: str, what: str, page_size: int | None
    ) -> Iterator[list[str]]:
        """The `key` list (tags, repositories) of each page of a listing, in turn."""
        url = first if page_size is None else first.copy_merge_params({"n": page_size})
        for page in self._pages(url, what):
            yield _names_of_page(page.content, key, self.registry, what)

    def list_referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """What the OCI 1.1 referrers API lists for `digest` (every page), or None when the
        registry has no such API (it answers 404: use the referrers tag schema instead).

        `artifact_type` is asked of the registry and applied here too, since a registry may
        ignore the filter."""
        what = f"referrers of {repository}@{digest}"
        url = httpx.URL(self._url(repository, "referrers", digest))
        if artifact_type is not None:
            url = url.copy_merge_params({"artifactType": artifact_type})
        found: list[Descriptor] = []
        try:
            for page in self._pages(url, what, accept=OCI_INDEX):
                found += _referrers_of_page(page, self.registry, what)
        except RegistryError as error:
            if error.status == 404 and not found:
                return None
            raise
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def _pages(
        self, url: httpx.URL, what: str, accept: str | None = None
    ) -> Iterator[httpx.Response]:
        """Each page of a paginated listing, following `Link: <...>; rel="next"`."""
        seen: set[str] = set()
        next_url: httpx.URL | None = url
        while next_url is not None:
            if str(next_url) in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(
                    f"{self.registry} sent a listing whose pages never end ({what});"
                    " the registry is broken"
                )
            seen.add(str(next_url))
            response = self.http.get(
                next_url,
                headers={"Accept": accept} if accept else {},
                extensions={extensions.BUFFER: METADATA_LIMIT},
            )
            if response.status_code != 200:
                raise registry_error(response, what)
            next_link = response.links.get("next", {}).get("url")
            yield response
            next_url = httpx.URL(self._location(next_link)) if next_link else None

    def check_login(self) -> None:
        """GET /v2/ with whatever credentials the chain holds for this registry."""
        response = self.http.get(f"{self.base}/v2/")
        if response.status_code != 200:
            raise registry_error(response, "the API version check (GET /v2/)")
        response.close()

    def put_manifest(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> PushedManifest:
        """PUT a manifest as it is; the answer says whether the registry indexed its subject."""
        response = self.http.put(
            self._url(repository, "manifests", reference),
            content=raw,
            headers={"Content-Type": media_type},
        )
        if response.status_code not in (200, 201):
            raise registry_error(response, f"pushing {_manifest_what(repository, reference)}")
        return PushedManifest(
            response.headers.get("Docker-Content-Digest", ""),
            subject_indexed="OCI-Subject" in response.headers,
        )

    # -- blobs -----------------------------------------------------------------------------

    def read_blob(self, repository: str, digest: str, limit: int = METADATA_LIMIT) -> bytes:
        """A small blob (an image config) in memory, verified (see `_get_verified`)."""
        what = f"blob {digest} of {repository}"
        return self._get_verified(
            self._url(repository, "blobs", digest), digest, what, limit
        ).content

    def open_blob(self, repository: str, digest: str) -> RemoteBlobReader:
        """A blob as a resumable stream; the caller verifies it (see `image.Layer`)."""
        what = f"blob {digest} of {self.registry}/{repository}"
        url = self._url(repository, "blobs", digest)
        with self._lock:
            skip = frozenset(self._distrusted.get(digest, ()))
        return RemoteBlobReader(
            self.http,
            url,
            what,
            on_bytes=self.on_download,
            skip_mirrors=skip,
            cancellation=self.cancellation,
        )

    def distrust(self, digest: str, mirror: str) -> None:
        """`mirror` served `digest` corrupt: read it from elsewhere from now on."""
        with self._lock:
            self._distrusted.setdefault(digest, set()).add(mirror)

    def blob_exists(self, repository: str, digest: str) -> bool:
        return self.blob_size(repository, digest) is not None

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size the registry reports for `digest` in `repository` (-1 when it gives
        none); None when the repository does not hold it."""
        response = self.http.head(self._url(repository, "blobs", digest))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise registry_error(response, f"checking blob {digest} in {repository}")
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else -1

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
        chunked = False  # the registry refused a monolithic PUT: every session sends PATCHes

        def send(location: str) -> None:
            nonlocal chunked
            if chunked:
                self._patch_chunks(location, digest, opener, on_bytes, what)
                return
            try:
                self._put_whole(location, digest, opener, size, on_bytes, what)
            except _NeedsChunks:
                chunked = True  # not a failure: the next session sends chunks
                raise

        self._in_sessions(repository, what, on_restart, send)

    def upload_streamed(
        self,
        repository: str,
        making: Callable[[], AbstractContextManager[BlobInTheMaking]],
        on_bytes: Callable[[int], None] = lambda n: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> tuple[str, int] | None:
        """POST a session, PATCH the blob's bytes as they are made (chunked transfer encoding:
        their length and digest are not known yet), then PUT its digest, which the registry
        checks. Returns (digest, size); None when the registry refuses a PATCH of unknown
        length, so the caller makes the blob whole first and uses `upload_blob`.

        `making` makes the blob afresh for each attempt; a failed upload restarts in a new
        session, as in `upload_blob`.
        """
        what = f"uploading a blob to {repository}"

        def send(location: str) -> tuple[str, int] | None:
            with making() as blob:
                chunks = _sent(blob, on_bytes, self.cancellation)
                try:
                    response = self.http.patch(
                        location,
                        content=chunks,
                        headers={"Content-Type": "application/octet-stream"},
                    )
                finally:
                    chunks.close()
                if response.status_code in _NO_STREAMED_PATCH:
                    response.close()
                    LOG.debug("%s: no streamed PATCH (%d)", what, response.status_code)
                    return None
                if response.status_code != 202:
                    raise registry_error(response, what)
                response.close()
                digest, size = blob.digest, blob.size
            received = response.headers.get("Range")
            if received is not None and received != f"0-{size - 1}":
                raise RegistryError(f"{what}: sent {size} bytes, the registry has {received}")
            location = self._location(response.headers.get("Location", location))
            response = self.http.put(httpx.URL(location).copy_merge_params({"digest": digest}))
            if response.status_code not in (201, 204):
                raise registry_error(response, f"uploading blob {digest} to {repository}")
            response.close()
            return digest, size

        return self._in_sessions(repository, what, on_restart, send)

    def _in_sessions(
        self,
        repository: str,
        what: str,
        on_restart: Callable[[], None],
        send: Callable[[str], _Sent],
    ) -> _Sent:
        """`send` a blob into a new upload session; when it fails, again into another (a
        half-written session cannot be trusted), UPLOAD_ATTEMPTS times in all, each restart a
        retry of the run (drawn on --retry-budget, counted in the summary). `_NeedsChunks`
        is no failure: the next session simply starts."""
        attempt = 1
        while True:
            location = self._start_upload(repository, what)
            try:
                return send(location)
            except _NeedsChunks:
                continue
            except (httpx.TransportError, RegistryError) as exc:
                if attempt == UPLOAD_ATTEMPTS or not self._may_retry():
                    raise
                LOG.info("%s failed (%s); restarting in a new session", what, exc)
                on_restart()
                attempt += 1

    def _may_retry(self) -> bool:
        """Whether the run's retry budget allows one more restart (taking it); a client not
        built from the chain (a test's) has no budget."""
        take_retry = getattr(self.http, "take_retry", None)
        return take_retry is None or bool(take_retry())

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
            content=ReopeningBody(opener, on_bytes, self.cancellation),
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


def _sent(
    chunks: BlobInTheMaking, on_bytes: Callable[[int], None], cancellation: Cancellation
) -> Generator[bytes]:
    for chunk in chunks:
        cancellation.check()
        on_bytes(len(chunk))
        yield chunk


class _NeedsChunks(Exception):
    """The registry refused a monolithic PUT."""


def _manifest_what(repository: str, reference: str) -> str:
    separator = "@" if ":" in reference else ":"  # tags cannot contain ':'
    return f"manifest {repository}{separator}{reference}"


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip()


def _names_of_page(page: bytes, key: str, registry: str, what: str) -> list[str]:
    """The `key` list (`tags`, `repositories`) of one page; `null` (nothing yet) is empty."""
    try:
        document = parse_json(page)
    except ValueError:
        document = None
    names = document.get(key) if isinstance(document, dict) else []
    if not isinstance(document, dict) or not isinstance(names, list | None):
        raise RegistryError(f"{registry} answered {what} with something that is not a {key} list")
    if not all(isinstance(name, str) for name in names or []):
        raise RegistryError(f"{registry} answered {what} with a name that is not a string")
    return names or []


def _referrers_of_page(page: httpx.Response, registry: str, what: str) -> list[Descriptor]:
    """The descriptors of one referrers API answer (an OCI image index)."""
    from occystrap.manifest import ManifestIndex, parse_manifest

    try:
        parsed = parse_manifest(page.content, OCI_INDEX)
    except OccystrapError as error:
        raise RegistryError(f"{registry} answered {what} with a broken index: {error}") from None
    if not isinstance(parsed, ManifestIndex):
        raise RegistryError(f"{registry} answered {what} with a manifest, not an index")
    return list(parsed.manifests)


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
        except DigestMismatchError:
            if reader.served_by is not None:
                self.client.distrust(self.digest, reader.served_by)
            raise
        finally:
            reader.close()
