"""`gs://BUCKET[/PREFIX]`: an OCI image layout in a Google Cloud Storage bucket, and the
`gcs-auth` middleware that authorises its requests in the chain.

The objects are spoken to through the JSON API as httpx requests of the run's one client,
marked `GCS_REQUEST`; the `gcs-auth` plug-in adds a bearer token from the
application-default credentials to exactly those. `STORAGE_EMULATOR_HOST` points everything
at an emulator, where credentials are optional (sent when found, as the Google clients do).
Large blobs go up as resumable uploads, part by part; `index.json` is written with
`ifGenerationMatch` on the generation read, so two writers never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from occystrap.buckets import (
    BucketURI,
    ObjectInfo,
    expect_end,
    marked_only_factory,
    open_object,
    parse_bucket_uri,
    read_part,
    send_object_request,
)
from occystrap.cancel import Cancellation
from occystrap.endpoints import Scheme
from occystrap.errors import OccystrapError
from occystrap.middleware.base import Middleware
from occystrap.middleware.registry_auth import request_with_header
from occystrap.streams import Readable
from occystrap_gcp.google_auth import ApplicationDefault

if TYPE_CHECKING:  # the pipeline loads when a bucket is used, not with the middleware
    from occystrap.pipeline import RunContext

# Request extension: this request is for Cloud Storage and needs its bearer token.
GCS_REQUEST = "occystrap_gcp.gcs"
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_TOKEN_MARGIN = 300.0


def storage_endpoint() -> str:
    """The JSON API's base URL: STORAGE_EMULATOR_HOST's when set (with or without scheme)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if not emulator:
        return DEFAULT_ENDPOINT
    return emulator if "://" in emulator else f"http://{emulator}"


class GcsAccessToken(Middleware):
    """Adds `Authorization: Bearer` to Cloud Storage requests, the token cached until shortly
    before it expires and shared by the run."""

    def __init__(self, next_transport: httpx.BaseTransport) -> None:
        super().__init__(next_transport)
        self._lock = threading.Lock()
        self._adc: ApplicationDefault | None = None
        self._token: tuple[str, float] | None = None
        self._anonymous = False

    def _bearer(self) -> str | None:
        with self._lock:
            if self._token is not None and self._token[1] > time.monotonic():
                return self._token[0]
            if self._anonymous:
                return None
            try:
                if self._adc is None:
                    self._adc = ApplicationDefault(self.next, "gs://")
                token, lifetime = self._adc.token()
            except OccystrapError:
                if "STORAGE_EMULATOR_HOST" not in os.environ:
                    raise
                self._anonymous = True  # an emulator takes requests without credentials
                return None
            margin = min(_TOKEN_MARGIN, lifetime / 4)
            self._token = (token, time.monotonic() + lifetime - margin)
            return token

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.extensions.get(GCS_REQUEST):
            return self.next.handle_request(request)
        token = self._bearer()
        if token is None:
            return self.next.handle_request(request)
        return self.next.handle_request(
            request_with_header(request, "Authorization", f"Bearer {token}")
        )


# Plug-in factory: `gcs-auth` (automatic; it authorises only what gs:// marks).
gcs_auth_middleware = marked_only_factory("gcs-auth", GcsAccessToken)


class GcsObjects:
    """One bucket's objects through the JSON API."""

    def __init__(
        self,
        http: httpx.Client,
        bucket: str,
        where: str,
        part_size: int,
        cancellation: Cancellation | None = None,
    ) -> None:
        self.http, self.bucket, self.where = http, bucket, where
        self.bucket_id = ("gs", bucket)
        self.cancellation = cancellation  # the run's: stops a download it cancels
        # Resumable chunks must be multiples of 256 KiB.
        self.part_size = max(part_size // (256 * 1024), 1) * 256 * 1024
        endpoint = storage_endpoint()
        self.objects = f"{endpoint}/storage/v1/b/{quote(bucket, safe='')}/o"
        self.downloads = f"{endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o"
        self.uploads = f"{endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o"

    def _send(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        safe_twice: bool = False,
    ) -> httpx.Response:
        return send_object_request(
            self.http,
            method,
            url,
            {GCS_REQUEST: True},
            params=params,
            headers=headers,
            content=content,
            safe_twice=safe_twice,
        )

    def _fail(self, response: httpx.Response, what: str) -> OccystrapError:
        reason = ""
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            reason = f" {response.json()['error']['message']}"
        hint = (
            "; check the Google credentials and the bucket's IAM"
            if response.status_code in (401, 403)
            else ""
        )
        if response.status_code == 404:
            hint = "; does the bucket exist?"
        return OccystrapError(f"{self.where}: {what}: HTTP {response.status_code}{reason}{hint}")

    def _name(self, key: str) -> str:
        return quote(key, safe="")

    def stat(self, key: str) -> ObjectInfo | None:
        response = self._send("GET", f"{self.objects}/{self._name(key)}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"cannot look at {key}")
        document = response.json()
        return ObjectInfo(int(document["size"]), str(document["generation"]))

    def get(self, key: str) -> tuple[bytes, str] | None:
        info = self.stat(key)
        if info is None:
            return None
        response = self._send(
            "GET",
            f"{self.downloads}/{self._name(key)}",
            params={"alt": "media", "generation": info.version},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"cannot read {key}")
        return response.content, info.version

    def open(self, key: str) -> AbstractContextManager[Readable]:
        url = f"{self.downloads}/{self._name(key)}?alt=media"
        return open_object(
            self.http, url, f"{self.where}: {key}", {GCS_REQUEST: True}, self.cancellation
        )

    def put(self, key: str, data: bytes, *, version: str | None, absent: bool) -> bool:
        params = {"uploadType": "media", "name": key}
        if absent:
            params["ifGenerationMatch"] = "0"
        elif version is not None:
            params["ifGenerationMatch"] = version
        response = self._send(
            "POST",
            self.uploads,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            safe_twice=True,
        )
        if response.status_code == 412:  # another writer's generation is there now
            return False
        if response.status_code != 200:
            raise self._fail(response, f"cannot write {key}")
        return True

    def delete(self, key: str) -> None:
        response = self._send("DELETE", f"{self.objects}/{self._name(key)}", safe_twice=True)
        if response.status_code not in (200, 204, 404):
            raise self._fail(response, f"cannot delete {key}")

    def put_stream(
        self, key: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        started = self._send(
            "POST",
            self.uploads,
            params={"uploadType": "resumable", "name": key},
            headers={"X-Upload-Content-Length": str(size)},
            content=b"",
            safe_twice=True,
        )
        session = started.headers.get("location")
        if started.status_code != 200 or not session:
            raise self._fail(started, f"cannot start uploading {key}")
        offset = 0
        with opener() as source:
            while offset < size:
                part = read_part(source, min(self.part_size, size - offset), key)
                last = offset + len(part) == size
                if last:
                    expect_end(source, key)  # the reader checks the digest here
                headers = {"Content-Range": f"bytes {offset}-{offset + len(part) - 1}/{size}"}
                response = self._send(
                    "PUT", session, headers=headers, content=part, safe_twice=True
                )
                offset += len(part)
                if response.status_code not in ((200, 201) if last else (308,)):
                    raise self._fail(response, f"cannot upload {key} at byte {offset}")
        # A digest mismatch above leaves the session unfinished: Cloud Storage drops it
        # within a week, and nothing appears under the name.


def _open_store(uri: BucketURI, ctx: RunContext) -> GcsObjects:
    return GcsObjects(ctx.http, uri.bucket, uri.shown, uri.part_size, ctx.cancellation)


SCHEME = Scheme(
    "gs",
    "gs://BUCKET[/PREFIX][?tag=TAG&part_size=SIZE]",
    lambda text, rest: parse_bucket_uri(text, rest, _open_store),
)
