"""A blob made while it uploads (a layer compressed on the way): one streamed PATCH, then the
digest PUT; a registry that wants Content-Range gets None back (the caller makes the blob
whole first); a cut upload restarts in a new session with the blob made afresh."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from occystrap import compression
from occystrap.errors import RegistryError

BASE = "https://registry.test"
UPLOADS = f"{BASE}/v2/team/app/blobs/uploads/"
SESSION = f"{UPLOADS}session-1"
LAYER = b"".join(b"line %d of a layer\n" % n for n in range(200_000))


@contextmanager
def compressing() -> Iterator[compression.CompressedStream]:
    yield compression.CompressedStream(io.BytesIO(LAYER), compression.GZIP, threads=2)


def test_the_blob_streams_in_one_patch_and_its_digest_is_put(mock, client):
    mock.post(UPLOADS).respond(202, headers={"Location": SESSION})
    received = bytearray()

    def patch(request: httpx.Request) -> httpx.Response:
        received.extend(request.read())
        end = len(received) - 1
        return httpx.Response(202, headers={"Location": SESSION, "Range": f"0-{end}"})

    mock.patch(SESSION).mock(side_effect=patch)
    put = mock.put(url__startswith=SESSION).respond(201)
    counted = []
    digest, size = client.upload_streamed("team/app", compressing, counted.append)
    assert gzip.decompress(bytes(received)) == LAYER
    assert (digest, size) == ("sha256:" + hashlib.sha256(received).hexdigest(), len(received))
    assert sum(counted) == size
    assert put.calls.last.request.url.params["digest"] == digest
    # the same bytes compress_stream writes
    assert compression.compress_stream(io.BytesIO(LAYER), io.BytesIO(), compression.GZIP) == (
        digest,
        size,
    )


@pytest.mark.parametrize("status", [400, 405, 411, 416])
def test_a_registry_refusing_a_streamed_patch_gets_none(mock, client, status):
    mock.post(UPLOADS).respond(202, headers={"Location": SESSION})
    mock.patch(SESSION).respond(status)
    put = mock.put(url__startswith=SESSION).respond(201)
    assert client.upload_streamed("team/app", compressing) is None
    assert not put.called


def test_a_registry_holding_fewer_bytes_than_sent_is_an_error_and_a_new_session(mock, client):
    mock.post(UPLOADS).respond(202, headers={"Location": SESSION})
    mock.patch(SESSION).respond(202, headers={"Location": SESSION, "Range": "0-99"})
    put = mock.put(url__startswith=SESSION).respond(201)
    restarts = []
    with pytest.raises(RegistryError, match="the registry has 0-99"):
        client.upload_streamed("team/app", compressing, on_restart=lambda: restarts.append(1))
    assert len(restarts) == 2  # three sessions in all, each blob made afresh
    assert not put.called
