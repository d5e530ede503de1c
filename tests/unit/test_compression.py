"""Compression: streaming round-trips, multi-member input, truncation, determinism."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import random
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from occystrap import compression
from occystrap.compression import CorruptLayerError, Decompressor
from occystrap.errors import OccystrapError, UsageError
from occystrap.mediatypes import compression_of

KINDS = [compression.GZIP, compression.ZSTD, compression.NONE]


def _compress(data: bytes, kind: str) -> bytes:
    out = io.BytesIO()
    compression.compress_stream(io.BytesIO(data), out, kind)
    return out.getvalue()


def _read_all(blob: bytes, kind: str, read_size: int = 4096) -> bytes:
    parts = []
    with compression.decompressing_reader(io.BytesIO(blob), kind) as reader:
        while part := reader.read(read_size):
            parts.append(part)
    return b"".join(parts)


@pytest.mark.parametrize("kind", KINDS)
def test_compress_stream_reports_digest_and_size_of_output(kind):
    data = os.urandom(3000) * 500
    out = io.BytesIO()
    digest, size = compression.compress_stream(io.BytesIO(data), out, kind)
    blob = out.getvalue()
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert size == len(blob)
    assert compression.detect(blob[:4]) == kind or kind == compression.NONE


def test_gzip_output_is_deterministic_and_standard():
    data = b"layer contents " * 10000
    first = _compress(data, compression.GZIP)
    assert first == _compress(data, compression.GZIP)
    assert first[4:8] == b"\0\0\0\0"  # mtime 0
    assert not first[3] & 0x08  # no file name
    assert gzip.decompress(first) == data


def test_zstd_output_is_standard_with_checksum():
    data = b"layer contents " * 10000
    blob = _compress(data, compression.ZSTD)
    assert blob == _compress(data, compression.ZSTD)
    assert zstandard.get_frame_parameters(blob).has_checksum
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == data


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=5000),
    kind=st.sampled_from(KINDS),
    read_size=st.integers(min_value=1, max_value=9000),
)
def test_round_trip_through_reader(data, kind, read_size):
    assert _read_all(_compress(data, kind), kind, read_size) == data


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(st.binary(max_size=2000), min_size=1, max_size=4),
    kind=st.sampled_from([compression.GZIP, compression.ZSTD]),
    chunk_size=st.integers(min_value=1, max_value=3000),
)
def test_decompressor_handles_concatenated_members_in_any_chunking(members, kind, chunk_size):
    blob = b"".join(_compress(member, kind) for member in members)
    decompressor = Decompressor(kind)
    out = b"".join(
        decompressor.feed(blob[i : i + chunk_size]) for i in range(0, len(blob), chunk_size)
    )
    out += decompressor.flush()
    assert out == b"".join(members)


def test_reader_handles_multi_member_gzip_from_other_tools():
    blob = gzip.compress(b"first ", mtime=0) + gzip.compress(b"second", mtime=0)
    assert _read_all(blob, compression.GZIP) == b"first second"


def test_trailing_zero_padding_after_gzip_is_ignored():
    blob = gzip.compress(b"data") + b"\0" * 1024
    assert _read_all(blob, compression.GZIP) == b"data"


def test_highly_compressible_data_is_read_in_bounded_steps():
    data = b"\0" * (20 * 1024 * 1024)
    blob = _compress(data, compression.GZIP)
    decompressor = Decompressor(compression.GZIP)
    first = decompressor.feed(blob, max_length=65536)
    assert len(first) == 65536
    assert decompressor.pending_input
    assert _read_all(blob, compression.GZIP, 1 << 20) == data


@pytest.mark.parametrize("kind", [compression.GZIP, compression.ZSTD])
def test_truncated_input_raises_corrupt_layer(kind):
    blob = _compress(os.urandom(50000), kind)
    with pytest.raises(CorruptLayerError, match="truncated"):
        _read_all(blob[: len(blob) // 2], kind)


@pytest.mark.parametrize("kind", [compression.GZIP, compression.ZSTD])
def test_empty_input_raises_corrupt_layer(kind):
    with pytest.raises(CorruptLayerError):
        _read_all(b"", kind)


@pytest.mark.parametrize("kind", [compression.GZIP, compression.ZSTD])
def test_wrong_format_raises_corrupt_layer(kind):
    with pytest.raises(CorruptLayerError, match="not valid"):
        _read_all(b"this is a plain tar, not compressed" * 10, kind)


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=2000), kind=st.sampled_from([compression.GZIP, compression.ZSTD]))
def test_garbage_only_ever_raises_corrupt_layer(blob, kind):
    with contextlib.suppress(CorruptLayerError):
        _read_all(blob, kind)


def test_detect_by_magic():
    assert compression.detect(b"\x1f\x8b\x08\x00") == compression.GZIP
    assert compression.detect(b"\x28\xb5\x2f\xfd") == compression.ZSTD
    assert compression.detect(b"usta") == compression.NONE
    assert compression.detect(b"") == compression.NONE


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", compression.GZIP),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", compression.GZIP),
        ("application/vnd.oci.image.layer.v1.tar+gzip", compression.GZIP),
        ("application/vnd.oci.image.layer.v1.tar+zstd", compression.ZSTD),
        ("application/vnd.oci.image.layer.v1.tar", compression.NONE),
        ("application/vnd.docker.image.rootfs.diff.tar", compression.NONE),
    ],
)
def test_media_type_round_trip(media_type, kind):
    assert compression_of(media_type) == kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("oci", [True, False])
def test_media_type_for_is_inverse_of_from_media_type(kind, oci):
    if kind == compression.ZSTD and not oci:
        with pytest.raises(OccystrapError, match="OCI"):
            compression.media_type_for(kind, oci)
        return
    media_type = compression.media_type_for(kind, oci)
    assert compression_of(media_type) == kind
    assert ("vnd.oci." in media_type) == oci


def test_unknown_kind_is_rejected():
    with pytest.raises(OccystrapError, match="unknown compression"):
        compression.compress_stream(io.BytesIO(b""), io.BytesIO(), "lz4")


def _layer_like(size: int, seed: int = 0) -> bytes:
    """Bytes over 16 symbols (gzip halves them) with runs of text: deflate has real work."""
    table = bytes(b"0123456789abcdef"[i % 16] for i in range(256))
    noise = random.Random(seed).randbytes(size).translate(table)
    mixed = b"".join(noise[i : i + 4096] + b"usr/lib/python3/ " * 8 for i in range(0, size, 4096))
    return mixed[:size]


class _ShortReads(io.RawIOBase):
    """A source returning reads of random, small sizes, like a pipe or a socket."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = memoryview(data)
        self._random = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        count = min(len(target), self._random.randint(1, 300_000), len(self._data))
        target[:count] = self._data[:count]
        self._data = self._data[count:]
        return count

    def read(self, size: int = -1) -> bytes:
        out = bytearray(size if size >= 0 else len(self._data))
        return bytes(out[: self.readinto(out)])


def _gzip_with(data: bytes, threads: int, level: int | None = None, src=None) -> bytes:
    out = io.BytesIO()
    compression.compress_stream(
        src or io.BytesIO(data), out, compression.GZIP, level=level, threads=threads
    )
    return out.getvalue()


def _random_and_layer_like(pattern: str, seed: int = 0) -> bytes:
    """A block per letter of `pattern`: "r" random bytes (deflate gains nothing), "t"
    layer-like bytes (it halves them); a final "r" or "t" of a third of a block."""
    rng = random.Random(seed)
    size = compression.GZIP_BLOCK_SIZE
    blocks = [
        rng.randbytes(size) if letter == "r" else _layer_like(size, seed=rng.randrange(99))
        for letter in pattern
    ]
    return b"".join(blocks)[: len(pattern) * size - 2 * size // 3]


class _FedBytes:
    """The gzip engine, counting the bytes given to its deflaters."""

    def __init__(self, module) -> None:
        self._module = module
        self.fed = 0

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def compressobj(self, *args, **kwargs):
        deflater = self._module.compressobj(*args, **kwargs)
        counter = self

        class Counting:
            def compress(self, data):
                counter.fed += len(data)
                return deflater.compress(data)

            def flush(self, mode):
                return deflater.flush(mode)

        return Counting()


@pytest.mark.parametrize(
    "size",
    [0, 1, compression.GZIP_BLOCK_SIZE, 3 * compression.GZIP_BLOCK_SIZE + 12345],
)
def test_gzip_output_is_the_same_whatever_the_thread_count(size):
    data = _layer_like(size)
    single = _gzip_with(data, threads=1)
    assert _gzip_with(data, threads=2) == single
    assert _gzip_with(data, threads=4) == single
    assert _gzip_with(data, threads=3, src=_ShortReads(data, seed=size)) == single
    assert gzip.decompress(single) == data
    assert zlib.decompress(single, wbits=31) == data
    assert _read_all(single, compression.GZIP, 1 << 20) == data


def test_zstd_uses_the_threads_it_is_given_with_the_same_output(monkeypatch):
    workers_asked = []
    real_compressor = zstandard.ZstdCompressor

    def recording_compressor(**options):
        parameters = options.get("compression_params")  # threads given there, or directly
        workers_asked.append(
            parameters.threads if parameters is not None else options.get("threads", 0)
        )
        return real_compressor(**options)

    monkeypatch.setattr(compression.zstandard, "ZstdCompressor", recording_compressor)
    data = _layer_like(6 * 1024 * 1024, seed=3)
    outputs = set()
    for threads in (1, 2, 4):
        out = io.BytesIO()
        compression.compress_stream(io.BytesIO(data), out, compression.ZSTD, threads=threads)
        outputs.add(out.getvalue())
    assert workers_asked == [1, 2, 4]
    (blob,) = outputs
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == data


def test_parallel_gzip_is_one_standard_member_gzip_accepts(tmp_path):
    data = _layer_like(5 * compression.GZIP_BLOCK_SIZE + 7)
    path = tmp_path / "layer.gz"
    path.write_bytes(_gzip_with(data, threads=2))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    restored = subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True)
    assert restored.stdout == data
    blob = path.read_bytes()
    assert blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\0\0\0\0"  # no name, mtime 0
    inflater = zlib.decompressobj(wbits=31)
    assert inflater.decompress(blob) == data and inflater.eof and not inflater.unused_data


def test_parallel_gzip_deflates_on_the_threads_it_is_given(monkeypatch):
    deflating_threads = set()
    deflate_block = compression._deflate_block

    def recording(block, window, level):
        deflating_threads.add(threading.current_thread().name)
        return deflate_block(block, window, level)

    monkeypatch.setattr(compression, "_deflate_block", recording)
    _gzip_with(_layer_like(8 * compression.GZIP_BLOCK_SIZE), threads=2)
    assert len(deflating_threads) == 2
    assert threading.current_thread().name not in deflating_threads


def test_layers_compressed_at_once_share_one_deflate_pool(monkeypatch):
    """With a run-wide pool, all deflating happens on its threads (the -j budget), and each
    layer's bytes are those of a single-threaded run."""
    deflating_threads = set()
    deflate_block = compression._deflate_block

    def recording(block, window, level):
        deflating_threads.add(threading.current_thread().name)
        return deflate_block(block, window, level)

    layers = [_layer_like(4 * compression.GZIP_BLOCK_SIZE + n, seed=n) for n in range(3)]
    expected = [_gzip_with(layer, threads=1) for layer in layers]
    monkeypatch.setattr(compression, "_deflate_block", recording)
    with compression.DeflatePool(2) as pool:

        def compress(layer: bytes) -> bytes:
            out = io.BytesIO()
            compression.compress_stream(io.BytesIO(layer), out, compression.GZIP, pool=pool)
            return out.getvalue()

        with ThreadPoolExecutor(3, thread_name_prefix="layer") as layer_workers:
            assert list(layer_workers.map(compress, layers)) == expected
    assert len(deflating_threads) == 2
    assert all(name.startswith("deflate") for name in deflating_threads)


def test_a_shared_pool_bounds_the_blocks_held_over_all_layers():
    """Blocks read but not yet written stay within the pool's bound plus one waiting block
    per layer, however many layers share it."""
    threads, layer_count = 2, 4
    lock = threading.Lock()
    held = 0
    most_held = 0

    class CountingSource(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            nonlocal held, most_held
            data = super().read(size)
            with lock:
                held += len(data)
                most_held = max(most_held, held)
            return data

    class CountingSink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, piece) -> int:
            nonlocal held
            if len(piece) > 100:  # a block's output stands for a whole input block
                with lock:
                    held -= compression.GZIP_BLOCK_SIZE
            return len(piece)

    layers = [_layer_like(12 * compression.GZIP_BLOCK_SIZE, seed=n) for n in range(layer_count)]
    with compression.DeflatePool(threads) as pool:

        def compress(layer: bytes) -> None:
            compression.compress_stream(
                CountingSource(layer), CountingSink(), compression.GZIP, pool=pool
            )

        with ThreadPoolExecutor(layer_count) as layer_workers:
            list(layer_workers.map(compress, layers))
    bound = threads * compression._BLOCKS_AHEAD_PER_THREAD + layer_count
    assert most_held <= bound * compression.GZIP_BLOCK_SIZE


def test_a_failed_write_stops_the_deflate_threads_at_once():
    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, piece) -> int:
            if len(piece) > 100:
                raise OSError(28, "No space left on device")
            return len(piece)

    data = _layer_like(16 * compression.GZIP_BLOCK_SIZE)
    with pytest.raises(OSError, match="No space") as failure:
        compression.compress_stream(io.BytesIO(data), FullDisk(), compression.GZIP, threads=2)
    # the traceback (which holds the compressing frame) is still alive here
    assert failure.value.__traceback__ is not None
    assert not [t for t in threading.enumerate() if t.name.startswith("deflate")]


def test_parallel_gzip_holds_a_bounded_number_of_blocks():
    """The reader never runs more than a few blocks per thread ahead of the writer."""
    threads = 2
    source = io.BytesIO(_layer_like(40 * compression.GZIP_BLOCK_SIZE))
    blocks_read_at_each_write = []

    class CountingSink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, piece) -> int:
            blocks_read_at_each_write.append(source.tell() // compression.GZIP_BLOCK_SIZE)
            return len(piece)

    compression.compress_stream(source, CountingSink(), compression.GZIP, threads=threads)
    block_writes = blocks_read_at_each_write[1:-1]  # between the header and the trailer
    assert len(block_writes) == 40
    most_ahead = max(read - written for written, read in enumerate(block_writes))
    assert most_ahead <= threads * compression._BLOCKS_AHEAD_PER_THREAD + 1  # +1 waits a slot


@pytest.mark.parametrize("engine_fixture", ["installed_engine", "zlib_engine"])
def test_gzip_output_is_pinned_for_this_engine(engine_fixture, request):
    """The digest of a fixed input must not change within one engine version: a change here
    changes every layer digest occystrap pushes (and defeats caches keyed on them)."""
    pinned = {
        "isal-1.9.1": "42e4527c26b85072bd7871fc5d3c5826c61f702ab952a611c2e3938b44eb00df",
        "zlib-1.2.13": "6179ba4bd68486d76ad5fdfa715dd9b2bd845749e081013022d3c956ce97a24d",
    }
    engine = request.getfixturevalue(engine_fixture).name
    if engine not in pinned:
        pytest.skip(f"no pinned digest for {engine}")
    data = _layer_like(2 * compression.GZIP_BLOCK_SIZE + 99, seed=7)
    assert hashlib.sha256(_gzip_with(data, threads=2)).hexdigest() == pinned[engine]


@pytest.mark.parametrize("engine_fixture", ["installed_engine", "zlib_engine"])
def test_gzip_output_with_stored_blocks_is_pinned_for_this_engine(engine_fixture, request):
    """Which blocks are stored is decided from their bytes alone: the same input gives the
    same digest on every run (upload restarts and the blob cache rely on it)."""
    pinned = {
        "isal-1.9.1": "66fa6641dec2c6fa0067414d1f91c108309f0aae41bf15ec160f95e0d6a490f5",
        "zlib-1.2.13": "30b89be342a4c44ee3ffa82e6173f1be4efca2d187dea97c05bcd58bb9ffbe67",
    }
    engine = request.getfixturevalue(engine_fixture).name
    if engine not in pinned:
        pytest.skip(f"no pinned digest for {engine}")
    data = _random_and_layer_like("trt", seed=7)
    assert hashlib.sha256(_gzip_with(data, threads=2)).hexdigest() == pinned[engine]


@pytest.mark.parametrize("level", list(compression.GZIP_ENGINE.levels))
def test_every_gzip_level_round_trips(level):
    data = _layer_like(compression.GZIP_BLOCK_SIZE + 5000)
    blob = _gzip_with(data, threads=2, level=level)
    assert blob == _gzip_with(data, threads=1, level=level)
    assert gzip.decompress(blob) == data


@pytest.mark.parametrize(
    ("engine_fixture", "level"),
    [("installed_engine", 0), ("installed_engine", 1), ("installed_engine", 3)]
    + [("zlib_engine", 1), ("zlib_engine", 6)],
)
def test_incompressible_blocks_are_stored_not_deflated(engine_fixture, level, request, monkeypatch):
    """Random bytes cost a full deflate for nothing: such a block is judged from a sample
    and written as stored deflate blocks, verbatim; the others are deflated as before."""
    engine = request.getfixturevalue(engine_fixture)
    data = _random_and_layer_like("rtr")
    compressible = data[compression.GZIP_BLOCK_SIZE : 2 * compression.GZIP_BLOCK_SIZE]
    counting = _FedBytes(engine.module)
    monkeypatch.setattr(compression, "GZIP_ENGINE", dataclasses.replace(engine, module=counting))
    blob = _gzip_with(data, threads=2, level=level)
    # the compressible block in full, and a sample of each block
    sample = compression._SAMPLE_SLICES * compression._SAMPLE_SLICE_SIZE
    assert counting.fed <= len(compressible) + 3 * sample
    for start in (0, 2 * compression.GZIP_BLOCK_SIZE):
        random_block = data[start : start + compression.GZIP_BLOCK_SIZE]
        for piece in range(0, len(random_block), compression._STORED_MAX):
            assert random_block[piece : piece + compression._STORED_MAX] in blob
    assert len(blob) < len(data) - len(compressible) // 10  # the middle block still shrank
    assert gzip.decompress(blob) == data
    assert zlib.decompress(blob, wbits=31) == data
    assert _read_all(blob, compression.GZIP, 1 << 20) == data
    assert _gzip_with(data, threads=1, level=level) == blob
    assert _gzip_with(data, threads=3, level=level, src=_ShortReads(data, seed=level)) == blob


@settings(max_examples=25, deadline=None)
@given(
    segments=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=700_000)), max_size=6
    ),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_any_mix_of_random_and_compressible_bytes_round_trips_deterministically(segments, seed):
    """Wherever random stretches fall against the 1 MiB blocks, the gzip member inflates to
    the input, is the same on 1 or 3 threads, and is never more than a hair larger."""
    rng = random.Random(seed)
    data = b"".join(
        rng.randbytes(size) if is_random else _layer_like(size, seed=seed)
        for is_random, size in segments
    )
    blob = _gzip_with(data, threads=1)
    assert gzip.decompress(blob) == data
    assert _read_all(blob, compression.GZIP, 65536) == data
    assert _gzip_with(data, threads=3) == blob
    assert len(blob) <= len(data) * 1.001 + 64


@pytest.fixture
def installed_engine():
    return compression.GZIP_ENGINE


@pytest.fixture
def zlib_engine(monkeypatch):
    """Force the zlib fallback, as on a machine where `isal` does not import."""
    monkeypatch.setitem(sys.modules, "isal", None)
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)
    engine = compression.load_gzip_engine()
    monkeypatch.setattr(compression, "GZIP_ENGINE", engine)
    return engine


def test_fallback_to_zlib_when_isal_is_missing(zlib_engine):
    assert zlib_engine.module is zlib
    assert zlib_engine.name.startswith("zlib-")
    assert compression.output_setting(compression.GZIP, None).startswith("gzip/zlib-")
    data = _layer_like(2 * compression.GZIP_BLOCK_SIZE + 3)
    blob = _gzip_with(data, threads=2)
    assert blob == _gzip_with(data, threads=1)
    assert gzip.decompress(blob) == data
    assert _read_all(blob, compression.GZIP, 1 << 20) == data
    with pytest.raises(CorruptLayerError, match="truncated"):
        _read_all(blob[:-100], compression.GZIP)
    compression.check_level(compression.GZIP, 9)


def test_isal_is_used_when_installed():
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    assert compression.GZIP_ENGINE.module is isal_zlib
    assert compression.GZIP_ENGINE.name.startswith("isal-")


@pytest.mark.parametrize(
    ("kind", "level", "message"),
    [
        (compression.GZIP, compression.GZIP_ENGINE.levels.stop, "out of range for gzip"),
        (compression.GZIP, -1, "out of range for gzip"),
        (compression.ZSTD, 0, "out of range for zstd: use 1 to 22"),
        (compression.ZSTD, 23, "out of range for zstd"),
        (compression.NONE, 1, "has no levels"),
    ],
)
def test_levels_out_of_range_are_one_line_usage_errors(kind, level, message):
    with pytest.raises(UsageError, match=message):
        compression.check_level(kind, level)
    with pytest.raises(UsageError):
        compression.compress_stream(io.BytesIO(b"x"), io.BytesIO(), kind, level=level)


def test_output_setting_names_what_decides_the_bytes():
    gzip_setting = compression.output_setting(compression.GZIP, None)
    assert compression.GZIP_ENGINE.name in gzip_setting
    assert f"level={compression.GZIP_ENGINE.default_level}" in gzip_setting
    assert gzip_setting != compression.output_setting(compression.GZIP, 0)
    assert compression.output_setting(compression.ZSTD, 5) == (
        f"zstd/zstd-{'.'.join(map(str, zstandard.ZSTD_VERSION))}/level=5/checksum/multithreaded"
        "/job=4194304"
    )
