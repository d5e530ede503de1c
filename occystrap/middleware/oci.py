"""`oci://HOST/REPO:TAG/NAME` (or `REPO@sha256:.../NAME`): one file of an OCI artifact, fetched
with an ordinary `client.get`.

The middleware resolves the manifest, picks the layer titled NAME
(`org.opencontainers.image.title`, as oras names files) and answers with that blob's bytes,
streamed and verified against its digest (a mismatch raises while the body is read).
registries.conf applies as to registry:// references (location rewrites, blocked; its
insecure registries are spoken to in plain HTTP by the base transport). Its own
requests go down the rest of the chain, so mirrors, auth, retries, rate limits and logging
apply to them as to any registry read. Not to be confused with the CLI's `oci://PATH`
destination, a runtime bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

from occystrap.errors import OccystrapError, RegistryError, UsageError
from occystrap.middleware.base import Middleware
from occystrap.registries_conf import RegistriesConf
from occystrap.registry.blobs import RemoteBlobReader
from occystrap.registry.client import RegistryClient
from occystrap.registry.reference import ImageReference, parse_reference

# The manifest parser and the image model load when an oci:// file is fetched, not with the
# chain every run builds.
if TYPE_CHECKING:
    from occystrap.image import VerifyingReader

LOG = logging.getLogger(__name__)

SCHEME = "oci"
TITLE = "org.opencontainers.image.title"
_CHUNK = 1024 * 1024
_FORWARDED_HEADERS = ("User-Agent", "Accept-Encoding")


class OciUrlError(OccystrapError):
    """An oci:// URL that does not name a file of an artifact."""


def parse_oci_url(url: httpx.URL) -> tuple[ImageReference, str]:
    """The artifact an `oci://` URL names and the title of the file wanted in it.

    The first path segment holding ':' or '@' ends the repository (whose names hold neither);
    what follows it is the title, which may itself contain '/'."""
    host = url.netloc.decode("ascii")
    segments = url.path.lstrip("/").split("/")
    for position, segment in enumerate(segments):
        if ":" in segment or "@" in segment:
            name = "/".join(segments[position + 1 :])
            if not name:
                break
            image = "/".join(segments[: position + 1])
            try:
                return parse_reference(f"{host}/{image}"), name
            except OccystrapError as error:
                raise OciUrlError(str(error)) from None
    raise OciUrlError(
        f"{url} does not name a file: expected oci://HOST/REPO:TAG/NAME or"
        " oci://HOST/REPO@sha256:DIGEST/NAME"
    )


class _Borrowed(httpx.BaseTransport):
    """The rest of the chain, lent to a short-lived client that must not close it."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.transport.handle_request(request)

    def close(self) -> None:
        pass


class _VerifiedBody(httpx.SyncByteStream):
    """A blob's bytes, checked against its digest as they pass; closing stops the download."""

    def __init__(self, reader: VerifyingReader, blob: RemoteBlobReader) -> None:
        self.reader, self.blob = reader, blob

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.reader.read(_CHUNK):
            yield chunk

    def close(self) -> None:
        self.blob.close()


def _answer(status: int, message: str, request: httpx.Request) -> httpx.Response:
    return httpx.Response(status, text=message, request=request)


class OciArtifacts(Middleware):
    """Answers `oci://` requests with an artifact's file; passes every other request on."""

    def __init__(
        self,
        next_transport: httpx.BaseTransport,
        insecure: bool = False,
        registries: RegistriesConf | None = None,
    ) -> None:
        super().__init__(next_transport)
        self.insecure = insecure  # plain HTTP to the registries oci:// URLs name
        self.registries = registries or RegistriesConf()  # location rewrites, blocked

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != SCHEME:
            return self.next.handle_request(request)
        if request.method not in ("GET", "HEAD"):
            return _answer(405, f"{request.method} is not possible on oci:// URLs", request)
        try:
            reference, name = parse_oci_url(request.url)
        except OciUrlError as error:
            return _answer(400, str(error), request)
        try:
            reference = self.registries.apply(reference, str(request.url))
        except UsageError as error:  # a blocked registry
            return _answer(403, str(error), request)
        timeout = request.extensions.get("timeout")
        inner = httpx.Client(
            transport=_Borrowed(self.next),
            follow_redirects=True,
            trust_env=False,
            timeout=httpx.Timeout(**timeout) if timeout else None,
            headers={k: v for k, v in request.headers.items() if k.title() in _FORWARDED_HEADERS},
        )
        registry = RegistryClient(inner, reference.registry, insecure=self.insecure)
        from occystrap.manifest import Manifest, parse_manifest

        try:
            raw, media_type, _ = registry.get_manifest(reference.repository, reference.reference)
            document = parse_manifest(raw, media_type)
        except RegistryError as error:
            return _answer(error.status or 502, str(error), request)
        except OccystrapError as error:
            return _answer(502, f"{reference}: {error}", request)
        if not isinstance(document, Manifest):
            return _answer(
                400, f"{reference} is an index, not an artifact: name one manifest", request
            )
        titled = {layer.annotations.get(TITLE): layer for layer in document.layers}
        layer = titled.get(name)
        if layer is None:
            known = ", ".join(sorted(title for title in titled if title)) or "none"
            return _answer(
                404, f"{reference} has no file titled {name!r}; it has: {known}", request
            )
        headers = {
            "Content-Type": layer.media_type,
            "Content-Length": str(layer.size),
            "Docker-Content-Digest": layer.digest,
        }
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers, request=request)
        from occystrap.image import VerifyingReader

        blob = registry.open_blob(reference.repository, layer.digest)
        what = f"{request.url} ({layer.digest})"
        body = _VerifiedBody(VerifyingReader(blob, layer.digest, layer.size, what), blob)
        LOG.debug("%s is blob %s of %s", request.url, layer.digest, reference)
        return httpx.Response(200, headers=headers, stream=body, request=request)
