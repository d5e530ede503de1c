"""`s3://BUCKET[/PREFIX]`: an OCI image layout in an S3 bucket, and the `sigv4` middleware
that signs its requests in the chain.

The object operations below are plain httpx requests sent through the run's one client,
marked with the signer they need (`SIGNER`); the `sigv4` plug-in, in the chain, signs each
attempt and each redirect hop as it passes (botocore's SigV4 signer and standard credential
chain, `AWS_ENDPOINT_URL` honoured), so retries, rate limits and logging apply as to any
request. Large blobs go up as multipart uploads read part by part from the source; an
upload cut short is found again by the next run, which uploads only the parts missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
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
from occystrap.errors import DigestMismatchError, OccystrapError
from occystrap.middleware.base import Middleware
from occystrap.streams import Readable
from occystrap_aws.signing import PAYLOAD_HASH, UNSIGNED_PAYLOAD, AwsSigner

# The pipeline and the XML parser load when a bucket is used, not with the middleware that
# every run's chain holds.
if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from occystrap.pipeline import RunContext

LOG = logging.getLogger("occystrap.s3")
# Request extension: the `AwsSigner` the sigv4 middleware signs this request with.
SIGNER = "occystrap_aws.signer"
_XMLNS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _xml(content: bytes) -> Element:
    from xml.etree import ElementTree

    return ElementTree.fromstring(content)


class SigV4Signing(Middleware):
    """Signs the requests that carry a signer (SIGNER); passes every other one untouched."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        signer = request.extensions.get(SIGNER)
        if not isinstance(signer, AwsSigner):
            return self.next.handle_request(request)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in ("authorization", "x-amz-date")
        }
        body = b""
        if isinstance(request.stream, httpx.ByteStream):
            body = request.read()
        elif PAYLOAD_HASH.lower() not in request.headers:
            headers[PAYLOAD_HASH] = UNSIGNED_PAYLOAD  # a stream is read once, when sent
        signed = signer.sign(request.method, str(request.url), headers, body)
        return self.next.handle_request(
            httpx.Request(
                request.method,
                request.url,
                headers=signed,
                stream=request.stream,
                extensions=request.extensions,
            )
        )


# Plug-in factory: `sigv4` (automatic; it signs only what s3:// marks).
sigv4_middleware = marked_only_factory("sigv4", SigV4Signing)


class S3Objects:
    """One S3 bucket's objects, addressed path-style at the resolved endpoint."""

    def __init__(
        self,
        http: httpx.Client,
        signer: AwsSigner,
        bucket: str,
        where: str,
        part_size: int,
        cancellation: Cancellation | None = None,
    ) -> None:
        self.http = http
        self.cancellation = cancellation  # the run's: stops a download it cancels
        self.signer = signer
        self.bucket = bucket
        self.bucket_id = ("s3", bucket)
        self.where = where
        self.part_size = part_size
        self.base = f"{signer.endpoint_url.rstrip('/')}/{quote(bucket)}"

    def _url(self, key: str, query: str = "") -> str:
        return f"{self.base}/{quote(key, safe='/~')}" + (f"?{query}" if query else "")

    def _send(
        self,
        method: str,
        key: str,
        query: str = "",
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        safe_twice: bool = False,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if content is not None:
            headers[PAYLOAD_HASH] = hashlib.sha256(content).hexdigest()
        return send_object_request(
            self.http,
            method,
            self._url(key, query),
            {SIGNER: self.signer},
            headers=headers,
            content=content,
            safe_twice=safe_twice,
        )

    def _fail(self, response: httpx.Response, what: str) -> OccystrapError:
        code = ""
        with contextlib.suppress(SyntaxError):  # ElementTree's ParseError
            found = _xml(response.content).find("Code") if response.content else None
            code = f" {found.text}" if found is not None and found.text else ""
        hint = ""
        if response.status_code in (401, 403):
            hint = "; check the AWS credentials and the bucket's policy"
        elif code.strip() == "NoSuchBucket":
            hint = "; create the bucket first"
        return OccystrapError(f"{self.where}: {what}: HTTP {response.status_code}{code}{hint}")

    def stat(self, key: str) -> ObjectInfo | None:
        response = self._send("HEAD", key)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"cannot look at {key}")
        return ObjectInfo(int(response.headers["content-length"]), response.headers["etag"])

    def get(self, key: str) -> tuple[bytes, str] | None:
        response = self._send("GET", key)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"cannot read {key}")
        return response.content, response.headers["etag"]

    def open(self, key: str) -> AbstractContextManager[Readable]:
        return open_object(
            self.http,
            self._url(key),
            f"{self.where}: {key}",
            {SIGNER: self.signer},
            self.cancellation,
        )

    def put(self, key: str, data: bytes, *, version: str | None, absent: bool) -> bool:
        headers = {"Content-Type": "application/octet-stream"}
        if absent:
            headers["If-None-Match"] = "*"
        elif version is not None:
            headers["If-Match"] = version
        response = self._send("PUT", key, headers=headers, content=data, safe_twice=True)
        if response.status_code in (409, 412):  # another writer's object is there now
            return False
        if response.status_code != 200:
            raise self._fail(response, f"cannot write {key}")
        return True

    def delete(self, key: str) -> None:
        response = self._send("DELETE", key, safe_twice=True)
        if response.status_code not in (200, 204, 404):
            raise self._fail(response, f"cannot delete {key}")

    def put_stream(
        self, key: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        upload_id, done = self._resumable_upload(key)
        etags: list[str] = []
        offset = 0
        try:
            with opener() as source:
                while offset < size:
                    part = read_part(source, min(self.part_size, size - offset), key)
                    offset += len(part)
                    if offset == size:
                        expect_end(source, key)  # the reader checks the digest here
                    number = len(etags) + 1
                    etags.append(self._put_part(key, upload_id, number, part, done.get(number)))
        except DigestMismatchError:
            self._send("DELETE", key, f"uploadId={quote(upload_id)}", safe_twice=True)
            raise
        self._complete(key, upload_id, etags)

    def _resumable_upload(self, key: str) -> tuple[str, dict[int, str]]:
        """An unfinished upload of `key` an earlier run left (and the parts it holds), or a
        new one."""
        # The bucket's unfinished uploads, filtered here: a `prefix=` holding '/' is signed
        # differently by emulators than by S3. The first 1000 are looked at.
        response = self._send("GET", "", "uploads=")
        if response.status_code == 200:
            listing = _xml(response.content)
            for upload in listing.iter(f"{_XMLNS}Upload"):
                if upload.findtext(f"{_XMLNS}Key") == key:
                    upload_id = upload.findtext(f"{_XMLNS}UploadId") or ""
                    parts = self._send("GET", key, f"uploadId={quote(upload_id)}")
                    if parts.status_code != 200:
                        break
                    done = {
                        int(part.findtext(f"{_XMLNS}PartNumber") or 0): part.findtext(
                            f"{_XMLNS}ETag"
                        )
                        or ""
                        for part in _xml(parts.content).iter(f"{_XMLNS}Part")
                    }
                    LOG.info(
                        "%s: resuming the upload of %s (%d parts there)", self.where, key, len(done)
                    )
                    return upload_id, done
        response = self._send("POST", key, "uploads=", safe_twice=True)
        if response.status_code != 200:
            raise self._fail(response, f"cannot start uploading {key}")
        created = _xml(response.content).findtext(f"{_XMLNS}UploadId")
        if not created:
            raise self._fail(response, f"no upload id for {key}")
        return created, {}

    def _put_part(
        self, key: str, upload_id: str, number: int, part: bytes, held: str | None
    ) -> str:
        etag = f'"{hashlib.md5(part, usedforsecurity=False).hexdigest()}"'
        if held == etag:
            return etag  # an earlier run uploaded this very part
        query = f"partNumber={number}&uploadId={quote(upload_id)}"
        response = self._send("PUT", key, query, content=part, safe_twice=True)
        if response.status_code != 200:
            raise self._fail(response, f"cannot upload part {number} of {key}")
        return response.headers.get("etag", etag)

    def _complete(self, key: str, upload_id: str, etags: list[str]) -> None:
        body = "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
            for number, etag in enumerate(etags, start=1)
        )
        document = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        response = self._send(
            "POST", key, f"uploadId={quote(upload_id)}", content=document, safe_twice=True
        )
        if response.status_code != 200 or b"<Error>" in response.content:
            raise self._fail(response, f"cannot complete the upload of {key}")


def _open_store(uri: BucketURI, ctx: RunContext) -> S3Objects:
    signer = AwsSigner("s3", None, uri.shown)
    return S3Objects(ctx.http, signer, uri.bucket, uri.shown, uri.part_size, ctx.cancellation)


SCHEME = Scheme(
    "s3",
    "s3://BUCKET[/PREFIX][?tag=TAG&part_size=SIZE]",
    lambda text, rest: parse_bucket_uri(text, rest, _open_store),
)
