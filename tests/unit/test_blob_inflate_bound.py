"""Checking a layer's diff_id never inflates more than a bounded step at once."""

import gzip
import hashlib

import httpx
import respx

from occystrap.compression import Decompressor
from occystrap.registry import blobs

URL = "https://r.example/v2/team/app/blobs/sha256:x"


@respx.mock(using="httpcore")
def test_highly_compressible_layer_inflates_in_bounded_steps(respx_mock, tmp_path, monkeypatch):
    tar = bytes(64 * 1024 * 1024)  # 64 MiB of zeros gzip to ~64 KiB: one chunk inflates to all
    blob = gzip.compress(tar, mtime=0)
    respx_mock.get(URL).respond(200, content=blob)
    largest = []
    feed = Decompressor.feed

    def recording_feed(self, chunk, max_length=0):
        output = feed(self, chunk, max_length)
        largest.append(len(output))
        return output

    monkeypatch.setattr(Decompressor, "feed", recording_feed)
    with httpx.Client() as client:
        fetched = blobs.download_blob(
            client,
            URL,
            tmp_path / "layer",
            digest="sha256:" + hashlib.sha256(blob).hexdigest(),
            size=len(blob),
            what="layer",
            diff_id="sha256:" + hashlib.sha256(tar).hexdigest(),
            compression="gzip",
        )
    assert fetched.uncompressed_size == len(tar)
    assert max(largest) <= blobs.INFLATE_STEP
    assert len(largest) >= len(tar) // blobs.INFLATE_STEP
