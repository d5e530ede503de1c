"""Pull plumbing: spools read while they grow, read-ahead threads, and the docker-save writer
that streams a layer of unknown size and fills its size in afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import random
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occystrap import compression
from occystrap.dockersave import _SizeChanged, _TarWriter
from occystrap.errors import DigestMismatchError
from occystrap.image import Image
from occystrap.prefetch import ReadAhead, Spool, prefetched_layers, read_ahead

from .image_builder import context, layer_tar, make_image, save_tar


class Trickle:
    """A source handing out its bytes in the given piece sizes, then failing if asked to."""

    def __init__(self, data: bytes, pieces: list[int], error: Exception | None = None) -> None:
        self.data, self.pieces, self.error = data, list(pieces), error

    def read(self, size: int = -1) -> bytes:
        if not self.data:
            if self.error is not None:
                raise self.error
            return b""
        step = self.pieces.pop(0) if self.pieces else len(self.data)
        piece, self.data = self.data[: max(1, step)], self.data[max(1, step) :]
        return piece


def read_all(source, size: int = 1000) -> bytes:
    out = bytearray()
    while chunk := source.read(size):
        out += chunk
    return bytes(out)


@given(data=st.binary(max_size=5000), pieces=st.lists(st.integers(1, 3000), max_size=8))
@settings(max_examples=30, deadline=None)
def test_a_spool_read_while_it_is_written_gives_every_byte(tmp_path_factory, data, pieces):
    spool = Spool(tmp_path_factory.mktemp("spool") / "blob")
    writer = threading.Thread(target=spool.fill, args=(Trickle(data, pieces),))
    writer.start()
    with spool.reader() as reader:
        assert read_all(reader, 700) == data
    writer.join()


def test_a_spool_reader_gets_the_writers_failure(tmp_path):
    spool = Spool(tmp_path / "blob")
    failure = DigestMismatchError("layer sha256:x: content hashes to sha256:y")
    writer = threading.Thread(
        target=lambda: pytest.raises(
            DigestMismatchError, spool.fill, Trickle(b"ab" * 10, [5], failure)
        )
    )
    writer.start()
    # (the failure may come before the reader has opened the spool, or while it reads)
    with pytest.raises(DigestMismatchError, match="hashes to"), spool.reader() as reader:
        read_all(reader)
    writer.join()


@given(data=st.binary(max_size=3 * compression.CHUNK_SIZE // 1000), size=st.integers(1, 5000))
@settings(max_examples=30, deadline=None)
def test_read_ahead_passes_every_byte_in_order(data, size):
    ahead = ReadAhead(io.BytesIO(data), depth=2)
    try:
        assert read_all(ahead, size) == data
        assert ahead.read() == b""  # the end stays the end
    finally:
        ahead.close()


def test_read_ahead_raises_the_sources_error_where_it_happened():
    ahead = ReadAhead(Trickle(b"x" * 10, [4], OSError(5, "Input/output error")))
    try:
        assert read_all(ahead, 3) == b"x" * 10
    except OSError as error:
        assert error.errno == 5
    else:
        pytest.fail("the error was lost")
    finally:
        ahead.close()


def stream_member(out, data: bytes, size: int | None) -> None:
    archive = _TarWriter(out)
    archive.add(tarfile.TarInfo("before"), b"1234")
    archive.add_stream(tarfile.TarInfo("layer.tar"), io.BytesIO(data), size, lambda n: None)
    archive.close()


@pytest.mark.parametrize("length", [0, 1, 511, 512, 513, 100_000])
def test_a_member_of_unknown_size_gets_the_bytes_tarfile_would_write(tmp_path, length):
    data = bytes(range(256)) * (length // 256) + b"z" * (length % 256)
    with open(tmp_path / "streamed.tar", "wb") as out:
        stream_member(out, data, None)
    with tarfile.open(tmp_path / "reference.tar", "w", format=tarfile.PAX_FORMAT) as reference:
        for name, content in (("before", b"1234"), ("layer.tar", data)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            reference.addfile(info, io.BytesIO(content))
    assert (tmp_path / "streamed.tar").read_bytes() == (tmp_path / "reference.tar").read_bytes()


def test_sizes_past_8_gib_are_filled_in_base_256(tmp_path):
    """tarfile (like GNU tar and Go) reads the base-256 size of a member past ustar's range."""
    archive = _TarWriter(io.BytesIO())
    header = tarfile.TarInfo("layer.tar").tobuf(tarfile.PAX_FORMAT)
    out = io.BytesIO(header)
    archive._out = out
    archive.position = len(header)
    archive._fill_in_size(0, header, 9 * 1024**3 + 7)
    parsed = tarfile.TarInfo.frombuf(out.getvalue()[:512], tarfile.ENCODING, "surrogateescape")
    assert parsed.size == 9 * 1024**3 + 7


def test_a_non_seekable_output_needs_known_sizes():
    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.count = getattr(self, "count", 0) + len(data)
            return len(data)

    with pytest.raises(ValueError, match="unknown size needs a seekable output"):
        stream_member(Pipe(), b"abc", None)
    pipe = Pipe()
    stream_member(pipe, b"abc", 3)
    assert pipe.count == tarfile.RECORDSIZE


@pytest.mark.parametrize("data", [b"ab", b"abcd"])
def test_a_known_size_that_is_wrong_is_refused(tmp_path: Path, data):
    with open(tmp_path / "out.tar", "wb") as out, pytest.raises(_SizeChanged):
        stream_member(out, data, 3)


class RemoteLikeBlob:
    """A blob that counts as remote (so `prefetched_layers` fetches it), served from a file;
    its first `corrupt_opens` opens hand out damaged bytes, as a bad transfer would."""

    local = False

    def __init__(self, path: Path, corrupt_opens: int = 0) -> None:
        self.path, self.corrupt_opens = path, corrupt_opens
        self.opens = 0

    def __str__(self) -> str:
        return f"remote {self.path.name}"

    @contextlib.contextmanager
    def open(self):
        self.opens += 1
        data = self.path.read_bytes()
        if self.opens <= self.corrupt_opens:
            data = data[:-9] + bytes(byte ^ 0xFF for byte in data[-9:])
        yield io.BytesIO(data)


def remote_image(tmp_path: Path, layers: list[dict], corrupt_opens: int = 0) -> Image:
    image = make_image(tmp_path, layers)
    return dataclasses.replace(
        image,
        layers=tuple(
            dataclasses.replace(layer, blob=RemoteLikeBlob(layer.blob.path, corrupt_opens))
            for layer in image.layers
        ),
    )


# Several 1 MiB chunks (and a partial one) of incompressible bytes, then text.
BIG_LAYERS = [
    {"model.bin": random.Random(7).randbytes(3 * compression.CHUNK_SIZE + 12345)},
    {"etc/motd": b"hello\n" * 5000, "bin/sh": b"#!" + b"x" * 70_000},
]


def test_the_layer_needed_first_streams_without_a_spool(tmp_path):
    image = remote_image(tmp_path, BIG_LAYERS)
    ctx = context(tmp_path / "work")
    seen_in_workdir: list[str] = []
    layers = prefetched_layers(image.layers, ctx)
    first = next(layers)
    with first.open_tar() as tar:
        while tar.read(100_000):
            seen_in_workdir += [path.name for path in ctx.workdir.rglob("*") if path.is_file()]
    assert not any(first.digest[7:] in name for name in seen_in_workdir)
    second = next(layers)  # fetched ahead, while the first was read: through its spool
    with second.open_tar() as tar:
        assert read_all(tar, compression.CHUNK_SIZE) == layer_tar(BIG_LAYERS[1])
    layers.close()
    assert not list(ctx.workdir.rglob("*"))


def test_a_streamed_layer_that_fails_its_digest_is_fetched_again(tmp_path):
    image = remote_image(tmp_path, BIG_LAYERS[:1], corrupt_opens=1)
    save_tar(image, tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar") as archive:
        member = archive.extractfile(f"{image.layers[0].diff_id[7:]}/layer.tar")
        assert member is not None and member.read() == layer_tar(BIG_LAYERS[0])
    assert image.layers[0].blob.opens == 2


def test_a_streamed_layer_that_keeps_failing_leaves_no_output(tmp_path):
    image = remote_image(tmp_path, BIG_LAYERS[:1], corrupt_opens=2)
    with pytest.raises(DigestMismatchError):
        save_tar(image, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


# sha256 of the tarball of BIG_LAYERS, as written since the writer streams layers in (and as
# `tarfile` wrote it before): the bytes must not change however the layers get there.
BIG_LAYERS_TARBALL = "sha256:cff6b0a36b65bc80298f5d798c383fd4baa2058b1f0123e86b15c83ecfd52e7c"


@pytest.mark.parametrize("remote", [True, False])
def test_the_tarball_stays_byte_identical(tmp_path, remote):
    image = remote_image(tmp_path, BIG_LAYERS) if remote else make_image(tmp_path, BIG_LAYERS)
    save_tar(image, tmp_path / "out.tar")
    digest = hashlib.sha256((tmp_path / "out.tar").read_bytes()).hexdigest()
    assert f"sha256:{digest}" == BIG_LAYERS_TARBALL


@pytest.mark.parametrize("kept", [True, False])
def test_open_tar_reads_the_tar_through_the_callers_stage(tmp_path, kept):
    """The writer's read-ahead stage gets the tar's bytes whether they are inflated now or
    were kept on disk by an earlier inflate (a pull to a pipe)."""
    layer = make_image(tmp_path, [{"a": b"a" * 5000}]).layers[0]
    expected = layer_tar({"a": b"a" * 5000})
    if kept:
        (tmp_path / "layer.tar").write_bytes(expected)
        layer = dataclasses.replace(layer, tar_path=tmp_path / "layer.tar")
    staged = []

    @contextlib.contextmanager
    def recording(source):
        staged.append(source)
        with read_ahead(source) as ahead:
            yield ahead

    with layer.open_tar(inflating=recording) as stream:
        assert read_all(stream, 4096) == expected
    assert len(staged) == 1
