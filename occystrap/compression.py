"""Layer compression: recognise it, undo it while streaming, and apply it deterministically."""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import zstandard

from occystrap.errors import OccystrapError

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"

KINDS = (GZIP, ZSTD, NONE)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

CHUNK_SIZE = 1024 * 1024
# Compressed bytes fed per step when reading: keeps each step's output bounded.
_READ_STEP = 64 * 1024
_GZIP_WBITS = 31  # zlib's gzip container: header with mtime 0 and no file name
_DEFAULT_GZIP_LEVEL = 6
_DEFAULT_ZSTD_LEVEL = 3

_MEDIA_TYPES = {
    (GZIP, False): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    (NONE, False): "application/vnd.docker.image.rootfs.diff.tar",
    (GZIP, True): "application/vnd.oci.image.layer.v1.tar+gzip",
    (ZSTD, True): "application/vnd.oci.image.layer.v1.tar+zstd",
    (NONE, True): "application/vnd.oci.image.layer.v1.tar",
}


class CorruptLayerError(OccystrapError):
    """A compressed layer is truncated or not in the format its media type claims."""


def from_media_type(media_type: str) -> str:
    """The compression a layer media type declares (Docker and OCI spellings)."""
    if media_type.endswith("gzip"):
        return GZIP
    if media_type.endswith("zstd"):
        return ZSTD
    return NONE


def detect(first_bytes: bytes) -> str:
    """The compression the magic bytes at the start of a blob reveal."""
    if first_bytes.startswith(GZIP_MAGIC):
        return GZIP
    if first_bytes.startswith(ZSTD_MAGIC):
        return ZSTD
    return NONE


def media_type_for(kind: str, oci: bool) -> str:
    """The layer media type for `kind`; Docker schema 2 has no zstd layer type."""
    try:
        return _MEDIA_TYPES[(kind, oci)]
    except KeyError:
        manifest_kind = "OCI" if oci else "Docker"
        raise OccystrapError(
            f"{manifest_kind} manifests have no layer type for {kind!r} compression; "
            "use gzip or none, or write an OCI image for zstd"
        ) from None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise OccystrapError(f"unknown compression {kind!r}: expected one of {', '.join(KINDS)}")


class Decompressor:
    """Incremental decompression for the download path: feed compressed chunks, get tar bytes.

    Handles concatenated gzip members and zstd frames, as the formats allow. `flush()` raises
    `CorruptLayerError` if the stream stopped mid-member, so truncation is never silent.
    """

    def __init__(self, kind: str) -> None:
        _check_kind(kind)
        self.kind = kind
        self._engine = None  # current member/frame decoder; None between members
        self._seen_member = False
        self.pending_input = b""  # input a bounded `feed` left unconsumed; feed it again

    def _new_engine(self):
        if self.kind == GZIP:
            return zlib.decompressobj(wbits=_GZIP_WBITS)
        return zstandard.ZstdDecompressor().decompressobj()

    def _decode(self, data: bytes, budget: int) -> bytes:
        try:
            if budget and self.kind == GZIP:
                return self._engine.decompress(data, budget)
            return self._engine.decompress(data)
        except (zlib.error, zstandard.ZstdError) as error:
            raise CorruptLayerError(
                f"layer data is not valid {self.kind} ({error}): the blob is corrupt or its "
                "media type is wrong"
            ) from error

    def feed(self, chunk: bytes, max_length: int = 0) -> bytes:
        """Decompress `chunk`.

        With `max_length`, stops (for gzip) once that much output is produced and keeps the
        rest of `chunk` in `pending_input`, which bounds memory on highly compressed data.
        """
        if self.kind == NONE:
            return chunk
        output = []
        produced = 0
        data = chunk
        self.pending_input = b""
        while data:
            if max_length and produced >= max_length:
                self.pending_input = data
                break
            if self._engine is None:
                if self._seen_member and not data.strip(b"\x00"):
                    break  # zero padding after the last member is harmless
                self._engine = self._new_engine()
                self._seen_member = True
            out = self._decode(data, max_length - produced if max_length else 0)
            output.append(out)
            produced += len(out)
            if self._engine.eof:
                data = self._engine.unused_data
                self._engine = None
            elif self.kind == GZIP:
                data = self._engine.unconsumed_tail
            else:
                data = b""
        return b"".join(output)

    def flush(self) -> bytes:
        """Finish the stream; raises if the last member or frame was cut short."""
        if self.kind == NONE:
            return b""
        if not self._seen_member:
            raise CorruptLayerError(
                f"layer data is empty, expected {self.kind}: the blob is truncated"
            )
        if self._engine is not None:
            raise CorruptLayerError(
                f"layer data ends in the middle of a {self.kind} stream: the blob is truncated"
            )
        return b""


class _DecompressingReader(io.RawIOBase):
    """A read-only file over `raw` that yields its decompressed bytes."""

    def __init__(self, raw: BinaryIO, kind: str) -> None:
        self._raw = raw
        self._decompressor = Decompressor(kind)
        self._buffer = b""
        self._finished = False

    def readable(self) -> bool:
        return True

    def _refill(self) -> None:
        pending = self._decompressor.pending_input
        if pending:
            self._buffer = self._decompressor.feed(pending, _READ_STEP)
            return
        chunk = self._raw.read(_READ_STEP)
        if not chunk:
            self._buffer = self._decompressor.flush()
            self._finished = True
            return
        self._buffer = self._decompressor.feed(chunk, _READ_STEP)

    def readinto(self, target) -> int:
        while not self._buffer and not self._finished:
            self._refill()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


@contextmanager
def decompressing_reader(raw: BinaryIO, kind: str) -> Iterator[BinaryIO]:
    """A file-like reader yielding the uncompressed bytes of `raw`, streaming.

    Corrupt or truncated input raises `CorruptLayerError` from `read()`.
    """
    _check_kind(kind)
    if kind == NONE:
        yield raw
        return
    reader = io.BufferedReader(_DecompressingReader(raw, kind), CHUNK_SIZE)
    try:
        yield reader
    finally:
        reader.detach()


def _compressor(kind: str, level: int | None):
    """An object with compress(bytes) and flush() producing the `kind` stream."""
    if kind == GZIP:
        return zlib.compressobj(
            _DEFAULT_GZIP_LEVEL if level is None else level, zlib.DEFLATED, _GZIP_WBITS
        )
    compressor = zstandard.ZstdCompressor(
        level=_DEFAULT_ZSTD_LEVEL if level is None else level, write_checksum=True
    )
    return compressor.compressobj()


def compress_stream(
    src: BinaryIO, dst: BinaryIO, kind: str, level: int | None = None
) -> tuple[str, int]:
    """Copy `src` to `dst` compressed as `kind`, returning (sha256 digest, size) of the output.

    Deterministic: the same input and level always give the same bytes (gzip carries mtime 0
    and no file name), so re-exported layers keep their digests.
    """
    _check_kind(kind)
    digest = hashlib.sha256()
    size = 0

    def emit(data: bytes) -> None:
        nonlocal size
        if data:
            dst.write(data)
            digest.update(data)
            size += len(data)

    compressor = None if kind == NONE else _compressor(kind, level)
    while chunk := src.read(CHUNK_SIZE):
        emit(chunk if compressor is None else compressor.compress(chunk))
    if compressor is not None:
        emit(compressor.flush())
    return f"sha256:{digest.hexdigest()}", size
