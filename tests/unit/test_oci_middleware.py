"""The oci:// middleware through the real chain, mocked at the httpcore level: URL parsing,
what it answers for a missing file, an index, a wrong method, and a corrupt blob."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import respx

from occystrap.errors import DigestMismatchError
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.oci import OciUrlError, parse_oci_url
from occystrap.middleware.options import NetworkSettings
from occystrap.registries_conf import RegistriesConf, RegistryEntry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BASE = "https://registry.test/v2/team/app"
CONTENT = b"hello, artifact\n"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(content: bytes = CONTENT) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _digest(b"{}"),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "text/plain",
                    "digest": _digest(content),
                    "size": len(content),
                    "annotations": {"org.opencontainers.image.title": "a/b.txt"},
                }
            ],
        }
    ).encode()


@pytest.mark.parametrize(
    ("url", "repository", "reference", "name"),
    [
        ("oci://registry.test/team/app:1.0/a/b.txt", "team/app", "1.0", "a/b.txt"),
        (
            "oci://registry.test:5000/app@sha256:" + "a" * 64 + "/f",
            "app",
            "sha256:" + "a" * 64,
            "f",
        ),
        ("oci://docker.io/busybox:1/f", "library/busybox", "1", "f"),
    ],
)
def test_parse_oci_url(url, repository, reference, name):
    parsed, title = parse_oci_url(httpx.URL(url))
    assert (parsed.repository, parsed.reference, title) == (repository, reference, name)


@pytest.mark.parametrize(
    "url",
    ["oci://registry.test/team/app:1.0", "oci://registry.test/team/app/f", "oci://r.test/A:1/f"],
)
def test_parse_oci_url_refuses(url):
    with pytest.raises(OciUrlError):
        parse_oci_url(httpx.URL(url))


@pytest.fixture
def client():
    with build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        yield http


def _serve(router, manifest: bytes, content: bytes, media_type: str = OCI_MANIFEST):
    router.get(f"{BASE}/manifests/1.0").mock(
        return_value=httpx.Response(200, content=manifest, headers={"Content-Type": media_type})
    )
    router.get(url__startswith=f"{BASE}/blobs/").mock(
        return_value=httpx.Response(200, content=content)
    )


def test_the_titled_file_is_answered(client):
    with respx.mock(using="httpcore") as router:
        _serve(router, _manifest(), CONTENT)
        response = client.get("oci://registry.test/team/app:1.0/a/b.txt")
        head = client.head("oci://registry.test/team/app:1.0/a/b.txt")
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["Docker-Content-Digest"] == _digest(CONTENT)
    assert head.headers["Content-Length"] == str(len(CONTENT))


def test_a_corrupt_blob_raises_while_read(client):
    with respx.mock(using="httpcore") as router:
        _serve(router, _manifest(), b"HELLO, artifact\n")
        with pytest.raises(DigestMismatchError):
            client.get("oci://registry.test/team/app:1.0/a/b.txt")


def test_answers_for_what_cannot_be_served(client):
    with respx.mock(using="httpcore", assert_all_called=False) as router:
        _serve(router, _manifest(), CONTENT)
        assert client.get("oci://registry.test/team/app:1.0/c.txt").status_code == 404
        assert client.post("oci://registry.test/team/app:1.0/a/b.txt").status_code == 405
        assert client.get("oci://registry.test/team/app/c.txt").status_code == 400
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    with respx.mock(using="httpcore", assert_all_called=False) as router:
        _serve(router, index, b"", OCI_INDEX)
        answer = client.get("oci://registry.test/team/app:1.0/a/b.txt")
    assert answer.status_code == 400 and "index" in answer.text


def test_other_schemes_pass_through(client):
    with respx.mock(using="httpcore") as router:
        route = router.get("https://registry.test/v2/").mock(return_value=httpx.Response(200))
        assert client.get("https://registry.test/v2/").status_code == 200
    assert route.called


def test_registries_conf_rewrites_and_blocks():
    moved = RegistryEntry(prefix="registry.test/team", location="registry.test/moved")
    blocked = RegistryEntry(prefix="blocked.test", location="blocked.test", blocked=True)
    conf = RegistriesConf(registries=(moved, blocked))
    with (
        build_client(ChainSettings(NetworkSettings(retries=0), registries=conf)) as http,
        respx.mock(using="httpcore") as router,
    ):
        router.get("https://registry.test/v2/moved/app/manifests/1.0").mock(
            return_value=httpx.Response(
                200, content=_manifest(), headers={"Content-Type": OCI_MANIFEST}
            )
        )
        router.get(url__startswith="https://registry.test/v2/moved/app/blobs/").mock(
            return_value=httpx.Response(200, content=CONTENT)
        )
        assert http.get("oci://registry.test/team/app:1.0/a/b.txt").content == CONTENT
        refused = http.get("oci://blocked.test/app:1.0/a/b.txt")
    assert refused.status_code == 403 and "blocked" in refused.text
