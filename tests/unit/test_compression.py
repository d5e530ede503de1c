"""Compression: streaming round-trips, multi-member input, truncation, determinism."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from occystrap import compression
from occystrap.compression import CorruptLayerError, Decompressor
from occystrap.errors import OccystrapError

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
    assert compression.from_media_type(media_type) == kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("oci", [True, False])
def test_media_type_for_is_inverse_of_from_media_type(kind, oci):
    if kind == compression.ZSTD and not oci:
        with pytest.raises(OccystrapError, match="OCI"):
            compression.media_type_for(kind, oci)
        return
    media_type = compression.media_type_for(kind, oci)
    assert compression.from_media_type(media_type) == kind
    assert ("vnd.oci." in media_type) == oci


def test_unknown_kind_is_rejected():
    with pytest.raises(OccystrapError, match="unknown compression"):
        compression.compress_stream(io.BytesIO(b""), io.BytesIO(), "lz4")
