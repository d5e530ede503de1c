"""Layer compression: recognise it, undo it while streaming, and apply it deterministically."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO

import zstandard

from occystrap.errors import OccystrapError, UsageError
from occystrap.mediatypes import GZIP, NONE, ZSTD, layer_type_for
from occystrap.streams import CHUNK_SIZE

KINDS = (GZIP, ZSTD, NONE)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_GZIP_WBITS = 31  # gzip container, for inflating
_DEFAULT_ZSTD_LEVEL = 3
# Input per zstd job: the library's default (4 windows, 8 MiB at level 3) took ~60 MB per
# encoder; 4 MiB takes ~28 MB for 0.6 % more output and 8 % more CPU (docs/performance.md).
ZSTD_JOB_SIZE = 4 * 1024 * 1024
ZSTD_LEVELS = range(1, zstandard.MAX_COMPRESSION_LEVEL + 1)

# gzip output is a sequence of fixed-size input blocks, each deflated on its own (primed with
# the previous block's last 32 KiB, deflate's window) and ended with a sync flush, so blocks
# can be deflated on any number of threads and still concatenate to the same bytes.
GZIP_BLOCK_SIZE = 1024 * 1024
_DEFLATE_WINDOW = 32 * 1024
_RAW_DEFLATE_WBITS = -15
# magic, deflate, no flags (no name), mtime 0, no extra flags, OS "unknown": machine-independent
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a last, empty, fixed-Huffman deflate block
# Blocks deflated or queued ahead of the writer, per thread: bounds memory whatever the layer.
_BLOCKS_AHEAD_PER_THREAD = 2
# A block whose sample (1 KiB slices spread over it, deflated together at the layer's level)
# does not shrink below this share of its size is written as stored deflate blocks: random or
# already-compressed bytes (model weights' noise, .gz and .jpg files) cost a full deflate for
# nothing (ISA-L level 1: 3 ms per MiB, the sample ~0.05 ms). Floats measure ~0.93 and text,
# code and binaries far less, so they are deflated as before. Many small slices rather than
# a few big ones: a block that mixes both is rarely judged on its random part alone.
_SAMPLE_SLICES = 32
_SAMPLE_SLICE_SIZE = 1024
_INCOMPRESSIBLE_SAMPLE_RATIO = 0.98
_STORED_MAX = 0xFFFF  # bytes in one stored deflate block


@dataclass(frozen=True)
class GzipEngine:
    """The deflate implementation in use: ISA-L (`isal`) when importable, else zlib.

    Both offer zlib's API. Their outputs differ, so `name` (with version) is part of what
    decides a compressed layer's digest.
    """

    module: ModuleType
    name: str
    levels: range
    default_level: int


def load_gzip_engine() -> GzipEngine:
    """ISA-L if the `isal` package imports (wheels exist for common platforms), else zlib."""
    try:
        import isal
        from isal import isal_zlib
    except ImportError:
        # Level 6, as occystrap always used with zlib (level 1 is 3x faster, up to 12 % larger).
        return GzipEngine(zlib, f"zlib-{zlib.ZLIB_RUNTIME_VERSION}", range(0, 10), 6)
    # Level 1: ISA-L's fastest on every input measured, 10-12x cheaper than zlib 6, its size
    # within 3 % of ISA-L's best (docs/performance.md).
    return GzipEngine(isal_zlib, f"isal-{isal.__version__}", range(0, 4), 1)


GZIP_ENGINE = load_gzip_engine()


class CorruptLayerError(OccystrapError):
    """A compressed layer is truncated or not in the format its media type claims."""


def detect(first_bytes: bytes) -> str:
    """The compression the magic bytes at the start of a blob reveal."""
    if first_bytes.startswith(GZIP_MAGIC):
        return GZIP
    if first_bytes.startswith(ZSTD_MAGIC):
        return ZSTD
    return NONE


def media_type_for(kind: str, oci: bool) -> str:
    """The layer media type for `kind`; Docker schema 2 has no zstd layer type."""
    media_type = layer_type_for(kind, oci)
    if media_type is None:
        manifest_kind = "OCI" if oci else "Docker"
        raise OccystrapError(
            f"{manifest_kind} manifests have no layer type for {kind!r} compression; "
            "use gzip or none, or write an OCI image for zstd"
        )
    return media_type


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
        # current member/frame decoder (zlib, ISA-L or zstd decompressobj); None between members
        self._engine: Any = None
        self._seen_member = False
        self.pending_input = b""  # input a bounded `feed` left unconsumed; feed it again

    def _new_engine(self) -> Any:
        if self.kind == GZIP:
            return GZIP_ENGINE.module.decompressobj(wbits=_GZIP_WBITS)
        return zstandard.ZstdDecompressor().decompressobj()

    def _decode(self, data: bytes, budget: int) -> bytes:
        try:
            if budget and self.kind == GZIP:
                return self._engine.decompress(data, budget)
            return self._engine.decompress(data)
        except (GZIP_ENGINE.module.error, zlib.error, zstandard.ZstdError) as error:
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
        """Read and inflate in CHUNK_SIZE steps: few, large system calls and Python steps,
        and at most a chunk of output at a time however well the input compresses."""
        pending = self._decompressor.pending_input
        if pending:
            self._buffer = self._decompressor.feed(pending, CHUNK_SIZE)
            return
        chunk = self._raw.read(CHUNK_SIZE)
        if not chunk:
            self._buffer = self._decompressor.flush()
            self._finished = True
            return
        self._buffer = self._decompressor.feed(chunk, CHUNK_SIZE)

    def readinto(self, target) -> int:
        while not self._buffer and not self._finished:
            self._refill()
        count = min(len(target), len(self._buffer))
        target[:count] = memoryview(self._buffer)[:count]
        self._buffer = self._buffer[count:] if count < len(self._buffer) else b""
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


def check_level(kind: str, level: int | None) -> None:
    """Reject a compression level `kind` does not have, naming the valid range."""
    if level is None:
        return
    if kind == GZIP:
        valid, engine = GZIP_ENGINE.levels, f"gzip ({GZIP_ENGINE.name})"
    elif kind == ZSTD:
        valid, engine = ZSTD_LEVELS, "zstd"
    else:
        raise UsageError(f"compression {kind!r} has no levels: drop --compression-level")
    if level not in valid:
        raise UsageError(
            f"compression level {level} is out of range for {engine}: "
            f"use {valid.start} to {valid.stop - 1}"
        )


def output_setting(kind: str, level: int | None) -> str:
    """Everything that decides the bytes `compress_stream` writes for a given input.

    Two runs with the same setting produce the same blob, so a cache may key on it.
    """
    _check_kind(kind)
    check_level(kind, level)
    if kind == GZIP:
        level = GZIP_ENGINE.default_level if level is None else level
        return (
            f"gzip/{GZIP_ENGINE.name}/level={level}/block={GZIP_BLOCK_SIZE}"
            f"/stored-from={_INCOMPRESSIBLE_SAMPLE_RATIO}"
            f"/sample={_SAMPLE_SLICES}x{_SAMPLE_SLICE_SIZE}"
        )
    if kind == ZSTD:
        level = _DEFAULT_ZSTD_LEVEL if level is None else level
        version = ".".join(map(str, zstandard.ZSTD_VERSION))
        return f"zstd/zstd-{version}/level={level}/checksum/multithreaded/job={ZSTD_JOB_SIZE}"
    return NONE


def _incompressible(block: bytes, level: int) -> bool:
    """Whether deflate would gain (almost) nothing on `block`, judged from its own bytes
    only (so the output stays deterministic): slices spread over it, deflated together."""
    sample = block
    if len(block) > _SAMPLE_SLICES * _SAMPLE_SLICE_SIZE:
        step = len(block) // _SAMPLE_SLICES
        starts = range(0, _SAMPLE_SLICES * step, step)
        sample = b"".join(block[start : start + _SAMPLE_SLICE_SIZE] for start in starts)
    module = GZIP_ENGINE.module
    deflater = module.compressobj(level, module.DEFLATED, _RAW_DEFLATE_WBITS)
    deflated = len(deflater.compress(sample)) + len(deflater.flush(module.Z_SYNC_FLUSH))
    return deflated >= len(sample) * _INCOMPRESSIBLE_SAMPLE_RATIO


def _stored(block: bytes) -> bytes:
    """`block` as stored (uncompressed) deflate blocks, not final, byte-aligned like a
    sync-flushed block: any inflater reads them, and they still serve as the next block's
    window."""
    view = memoryview(block)
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(block), _STORED_MAX):
        piece = view[start : start + _STORED_MAX]
        # BFINAL 0, BTYPE 00 (stored), padded to the byte; LEN and its one's complement
        pieces += (struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF), piece)
    return b"".join(pieces)


def _deflate_block(block: bytes, window: bytes, level: int) -> bytes:
    """Raw deflate of `block` primed with `window`, ending byte-aligned (sync flush); stored
    blocks when deflating would not shrink it."""
    if _incompressible(block, level):
        return _stored(block)
    module = GZIP_ENGINE.module
    if window:
        deflater = module.compressobj(level, module.DEFLATED, _RAW_DEFLATE_WBITS, zdict=window)
    else:
        deflater = module.compressobj(level, module.DEFLATED, _RAW_DEFLATE_WBITS)
    return deflater.compress(block) + deflater.flush(module.Z_SYNC_FLUSH)


def _read_block(src: BinaryIO) -> bytes:
    """Exactly GZIP_BLOCK_SIZE bytes (fewer only at the end): block bounds must not depend on
    how `src` happens to split its reads, or the output would."""
    parts = []
    wanted = GZIP_BLOCK_SIZE
    while wanted and (part := src.read(wanted)):
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


class DeflatePool:
    """Threads that deflate gzip blocks, shared by the layers a run compresses at once.

    At most `threads` threads deflate, and at most `2 * threads` blocks are in flight over
    all layers together, whatever their number: a lone big layer gets every thread, many
    layers never exceed the -j budget, and memory stays bounded.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="deflate")
        self._slots = threading.BoundedSemaphore(threads * _BLOCKS_AHEAD_PER_THREAD)

    def __enter__(self) -> DeflatePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)

    def deflate(self, blocks: Iterator[tuple[bytes, bytes]], level: int) -> Iterator[bytes]:
        """The deflated `blocks` ((block, window) pairs), in order, deflated on the pool."""
        in_flight: deque[Future[bytes]] = deque()

        def oldest() -> bytes:
            try:
                return in_flight.popleft().result()
            finally:
                self._slots.release()

        try:
            for block, window in blocks:
                # Without a free slot, finish our own oldest block first; wait only when we
                # have none in flight (others then hold every slot, and will free them).
                while not self._slots.acquire(blocking=not in_flight):
                    yield oldest()
                in_flight.append(self._executor.submit(_deflate_block, block, window, level))
            while in_flight:
                yield oldest()
        finally:
            for future in in_flight:  # stopped early: leave no work behind
                future.cancel()
                self._slots.release()


class _GzipMember:
    """Reads a layer in blocks, keeping the CRC and size its gzip trailer needs."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._crc = 0
        self._size = 0

    def blocks(self) -> Iterator[tuple[bytes, bytes]]:
        """(block, the 32 KiB of input before it) for each block."""
        window = b""
        while block := _read_block(self._src):
            self._crc = GZIP_ENGINE.module.crc32(block, self._crc)
            self._size += len(block)
            yield block, window
            window = block[-_DEFLATE_WINDOW:]

    def trailer(self) -> bytes:
        return _FINAL_EMPTY_BLOCK + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


def _gzip_pieces(
    src: BinaryIO, level: int, threads: int, pool: DeflatePool | None
) -> Iterator[bytes]:
    """The gzip member for `src`: blocks deflated on `pool`, on a pool of `threads` threads
    of its own, or inline for one thread."""
    if pool is None and threads > 1:
        with DeflatePool(threads) as own:
            yield from _gzip_pieces(src, level, threads, own)
        return
    member = _GzipMember(src)
    yield _GZIP_HEADER
    if pool is None:
        for block, window in member.blocks():
            yield _deflate_block(block, window, level)
    else:
        yield from pool.deflate(member.blocks(), level)
    yield member.trailer()


def _zstd_pieces(src: BinaryIO, level: int | None, threads: int) -> Iterator[bytes]:
    # zstd's multi-threaded mode (any worker count >= 1) writes the same frames whatever the
    # count; its single-threaded mode (0 workers) would write different ones. A fixed job
    # size keeps them so and bounds the encoder's memory.
    parameters = zstandard.ZstdCompressionParameters.from_level(
        _DEFAULT_ZSTD_LEVEL if level is None else level,
        threads=threads,
        job_size=ZSTD_JOB_SIZE,
        write_checksum=True,
    )
    compressor = zstandard.ZstdCompressor(compression_params=parameters).compressobj()
    while chunk := src.read(CHUNK_SIZE):
        yield compressor.compress(chunk)
    yield compressor.flush()


def _pieces(
    src: BinaryIO, kind: str, level: int | None, threads: int, pool: DeflatePool | None
) -> Generator[bytes, None, None]:
    if kind == GZIP:
        yield from _gzip_pieces(
            src, GZIP_ENGINE.default_level if level is None else level, threads, pool
        )
    elif kind == ZSTD:
        yield from _zstd_pieces(src, level, threads)
    else:
        while chunk := src.read(CHUNK_SIZE):
            yield chunk


class CompressedStream:
    """`src` compressed as `kind` while it is iterated, chunk by chunk: the bytes
    `compress_stream` writes, for a consumer that sends them on as they come (a streamed
    upload). `digest` and `size` are known once the iteration has ended."""

    def __init__(
        self,
        src: BinaryIO,
        kind: str,
        level: int | None = None,
        threads: int = 1,
        pool: DeflatePool | None = None,
    ) -> None:
        _check_kind(kind)
        check_level(kind, level)
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self._src, self._kind, self._level = src, kind, level
        self._threads, self._pool = threads, pool
        self._hasher = hashlib.sha256()
        self.size = 0
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        # closing: a consumer that stops early stops the deflate threads now
        with closing(
            _pieces(self._src, self._kind, self._level, self._threads, self._pool)
        ) as pieces:
            for piece in pieces:
                if piece:
                    yield piece
                    # hashed once the consumer has taken it on: a block is held no longer
                    # than it was when compress_stream wrote before hashing
                    self._hasher.update(piece)
                    self.size += len(piece)
        self._ended = True

    @property
    def digest(self) -> str:
        if not self._ended:
            raise RuntimeError("the digest of a compressed stream is known at its end")
        return f"sha256:{self._hasher.hexdigest()}"


def compress_stream(
    src: BinaryIO,
    dst: BinaryIO,
    kind: str,
    level: int | None = None,
    threads: int = 1,
    pool: DeflatePool | None = None,
) -> tuple[str, int]:
    """Copy `src` to `dst` compressed as `kind`, returning (sha256 digest, size) of the output.

    Deterministic: the same input and `output_setting(kind, level)` always give the same
    bytes, whatever `threads` (gzip carries mtime 0 and no file name). Up to `threads`
    threads compress the layer (gzip: blocks deflated on a pool; zstd: its own workers) while
    this thread reads, hashes and writes; memory stays bounded (a few blocks per thread).

    `pool`, shared by the layers compressed at once (one per run, sized to the -j budget),
    deflates gzip blocks instead of a pool of this call's own; see `DeflatePool`.
    """
    stream = CompressedStream(src, kind, level, threads, pool)
    for piece in stream:
        dst.write(piece)
    return stream.digest, stream.size
