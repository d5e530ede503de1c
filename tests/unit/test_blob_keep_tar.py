"""Downloads can keep the verified uncompressed tar, so tar outputs need not inflate again."""

import gzip
import hashlib

import httpx
import pytest
import respx

from occystrap.errors import DigestMismatchError
from occystrap.inputs.registry import InflatedLayer
from occystrap.registry import blobs

URL = "https://r.example/v2/team/app/blobs/sha256:x"
TAR = bytes(range(256)) * 4096
BLOB = gzip.compress(TAR, mtime=0)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
DIFF_ID = "sha256:" + hashlib.sha256(TAR).hexdigest()


def _download(tmp_path, diff_id=DIFF_ID):
    with httpx.Client() as client:
        return blobs.download_blob(
            client,
            URL,
            tmp_path / "layer",
            digest=DIGEST,
            size=len(BLOB),
            what="layer",
            diff_id=diff_id,
            compression="gzip",
            tar_dest=tmp_path / "layer.tar",
        )


@respx.mock(using="httpcore")
def test_kept_tar_is_the_uncompressed_layer(respx_mock, tmp_path):
    respx_mock.get(URL).respond(200, content=BLOB)
    fetched = _download(tmp_path)
    assert (tmp_path / "layer.tar").read_bytes() == TAR
    assert (tmp_path / "layer").read_bytes() == BLOB
    assert fetched.uncompressed_size == len(TAR)
    layer = InflatedLayer(
        digest=DIGEST,
        size=len(BLOB),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id=DIFF_ID,
        path=tmp_path / "layer",
        tar_path=tmp_path / "layer.tar",
    )
    with layer.open_tar() as stream:
        assert stream.read() == TAR


@respx.mock(using="httpcore")
def test_kept_tar_restarts_cleanly_when_range_is_ignored(respx_mock, tmp_path):
    cut = httpx.ReadError("cut")

    class CutAfterHalf(httpx.SyncByteStream):
        def __iter__(self):
            yield BLOB[: len(BLOB) // 2]
            raise cut

    respx_mock.get(URL).mock(
        side_effect=[httpx.Response(200, stream=CutAfterHalf()), httpx.Response(200, content=BLOB)]
    )
    _download(tmp_path)
    assert (tmp_path / "layer.tar").read_bytes() == TAR


@respx.mock(using="httpcore")
def test_no_tar_is_left_when_the_diff_id_does_not_match(respx_mock, tmp_path):
    respx_mock.get(URL).respond(200, content=BLOB)
    with pytest.raises(DigestMismatchError):
        _download(tmp_path, diff_id="sha256:" + "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_keeping_a_tar_needs_a_diff_id(tmp_path):
    with pytest.raises(ValueError), httpx.Client() as client:
        blobs.download_blob(
            client,
            URL,
            tmp_path / "layer",
            digest=DIGEST,
            size=None,
            what="layer",
            tar_dest=tmp_path / "layer.tar",
        )


def test_inflated_layer_without_kept_tar_inflates_the_blob(tmp_path):
    (tmp_path / "layer").write_bytes(BLOB)
    layer = InflatedLayer(
        digest=DIGEST,
        size=len(BLOB),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id=DIFF_ID,
        path=tmp_path / "layer",
    )
    with layer.open_tar() as stream:
        assert stream.read() == TAR
