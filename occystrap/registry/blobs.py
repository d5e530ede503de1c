"""Streaming blob transfer: verified, resumable downloads and replayable upload bodies.

A failure while reading a body happens after the transport returned its response, so the
chain's Retry cannot see it; resuming with `Range` lives here, on top of the chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from occystrap.compression import CorruptLayerError, Decompressor
from occystrap.errors import DigestMismatchError, RegistryError
from occystrap.registry.errors import registry_error

LOG = logging.getLogger("occystrap.blobs")
CHUNK = 1024 * 1024
INFLATE_STEP = 4 * CHUNK

# Errors raised while a body streams: the connection died, not the request.
BODY_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)


def new_hasher(digest: str) -> hashlib._Hash:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(f"unsupported digest algorithm in {digest!r}: only sha256 and sha512")
    return hashlib.new(algorithm)


def hash_of(hasher: hashlib._Hash) -> str:
    """`algorithm:hex`, the form digests take in manifests."""
    return f"{hasher.name}:{hasher.hexdigest()}"


def check_digest(data: bytes, digest: str, what: str) -> None:
    """Verify bytes held in memory (a manifest, a config) against the digest naming them."""
    hasher = new_hasher(digest)
    hasher.update(data)
    if (actual := hash_of(hasher)) != digest:
        raise DigestMismatchError(f"{what}: content hashes to {actual}, expected {digest}")


@dataclass
class FetchedBlob:
    size: int
    uncompressed_size: int | None


class _Verifier:
    """Hashes the blob (and, optionally, its decompressed form) as bytes arrive.

    With `tar_out`, the decompressed bytes are also written there, so a layer whose tar is
    needed later is inflated once, here, rather than a second time by the output.
    """

    def __init__(
        self, digest: str, diff_id: str | None, compression: str, tar_out: BinaryIO | None = None
    ) -> None:
        self.digest, self.diff_id, self.compression = digest, diff_id, compression
        self.tar_out = tar_out
        self.reset()

    def reset(self) -> None:
        self.hasher = new_hasher(self.digest)
        self.size = 0
        self.tar_hasher = new_hasher(self.diff_id) if self.diff_id else None
        self.tar_size = 0
        self.decompressor = Decompressor(self.compression) if self.diff_id else None
        self.corrupt: CorruptLayerError | None = None
        if self.tar_out is not None:
            self.tar_out.seek(0)
            self.tar_out.truncate()

    def update(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.size += len(chunk)
        if self.decompressor is not None and self.corrupt is None:
            try:
                self._inflate(chunk)
            except CorruptLayerError as exc:
                # Keep hashing: a digest mismatch is the clearer report, so it goes first.
                self.corrupt = exc

    def _inflate(self, chunk: bytes) -> None:
        """Hash the tar bytes of `chunk` in bounded steps: 1 MiB of a highly compressible
        layer can inflate to a gigabyte, which must never sit in memory at once."""
        while chunk:
            self._update_tar(self.decompressor.feed(chunk, INFLATE_STEP))
            chunk = self.decompressor.pending_input

    def _update_tar(self, data: bytes) -> None:
        self.tar_hasher.update(data)
        self.tar_size += len(data)
        if self.tar_out is not None:
            self.tar_out.write(data)

    def check(self, what: str, expected_size: int | None) -> int | None:
        if expected_size is not None and self.size != expected_size:
            raise DigestMismatchError(
                f"{what}: received {self.size} bytes, the manifest says {expected_size}"
            )
        actual = hash_of(self.hasher)
        if actual != self.digest:
            raise DigestMismatchError(f"{what}: content hashes to {actual}, expected {self.digest}")
        if self.decompressor is None:
            return None
        if self.corrupt is not None:
            raise CorruptLayerError(f"{what}: {self.corrupt}")
        self._update_tar(self.decompressor.flush())
        actual_tar = hash_of(self.tar_hasher)
        if actual_tar != self.diff_id:
            raise DigestMismatchError(
                f"{what}: uncompressed content hashes to {actual_tar}, the config's diff_id is"
                f" {self.diff_id}"
            )
        return self.tar_size


def download_blob(
    http: httpx.Client,
    url: str,
    dest: Path,
    *,
    digest: str,
    size: int | None,
    what: str,
    diff_id: str | None = None,
    compression: str = "none",
    max_resumes: int = 5,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_restart: Callable[[], None] = lambda: None,
    tar_dest: Path | None = None,
) -> FetchedBlob:
    """Stream `url` into `dest`, verifying `digest` (and `diff_id` when given).

    The bytes go to a temporary sibling first and are renamed onto `dest` only once verified,
    so a mismatch or failure leaves nothing behind. A cut connection resumes with
    `Range: bytes=N-`; a server that ignores Range costs a full restart. With `tar_dest`
    (which needs `diff_id`), the verified uncompressed tar is kept there too.
    """
    if tar_dest is not None and diff_id is None:
        raise ValueError("keeping the uncompressed tar needs the diff_id to verify it")
    partial = dest.with_name(f".{dest.name}.partial")
    tar_partial = tar_dest.with_name(f".{tar_dest.name}.partial") if tar_dest else None
    resumes = 0
    try:
        with (
            open(partial, "wb") as out,
            open(tar_partial, "wb") if tar_partial else contextlib.nullcontext() as tar_out,
        ):
            verifier = _Verifier(digest, diff_id, compression, tar_out)
            while True:
                headers = {"Range": f"bytes={verifier.size}-"} if verifier.size else {}
                try:
                    with http.stream("GET", url, headers=headers) as response:
                        _start_or_resume(response, verifier, out, what, on_restart)
                        for chunk in response.iter_raw(CHUNK):
                            out.write(chunk)
                            verifier.update(chunk)
                            on_bytes(len(chunk))
                    break
                except BODY_ERRORS as exc:
                    resumes += 1
                    if resumes > max_resumes:
                        raise RegistryError(
                            f"{what}: the connection kept failing mid-download"
                            f" ({resumes - 1} resumes, last: {type(exc).__name__}); try again"
                        ) from None
                    LOG.info("%s: connection cut at %d bytes, resuming", what, verifier.size)
            uncompressed = verifier.check(what, size)
        os.replace(partial, dest)
        if tar_partial:
            os.replace(tar_partial, tar_dest)
    finally:
        partial.unlink(missing_ok=True)
        if tar_partial:
            tar_partial.unlink(missing_ok=True)
    return FetchedBlob(verifier.size, uncompressed)


def _start_or_resume(
    response: httpx.Response, verifier: _Verifier, out, what: str, on_restart: Callable[[], None]
) -> None:
    """Accept a 206 that continues where we stopped, or a 200 (restarting if we had bytes)."""
    if verifier.size and response.status_code == 206:
        content_range = response.headers.get("Content-Range", "")
        if content_range.startswith(f"bytes {verifier.size}-"):
            return
    if response.status_code != 200:
        raise registry_error(response, what)
    if verifier.size:
        LOG.info("%s: the server ignored Range: restarting from zero", what)
        out.seek(0)
        out.truncate()
        verifier.reset()
        on_restart()


class FileBodyStream(httpx.SyncByteStream):
    """An upload body that re-opens its file on every iteration, so a retry can resend it.

    Chunks keep HTTP/2 uploads linear: httpx slices a large `bytes` body quadratically.
    """

    def __init__(self, path: Path, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self.path = path
        self.on_bytes = on_bytes

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as source:
            while chunk := source.read(CHUNK):
                self.on_bytes(len(chunk))
                yield chunk
