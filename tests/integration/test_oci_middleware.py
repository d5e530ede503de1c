"""The chain's oci:// middleware against real registries: a file of an artifact fetched with
`client.get`, with Basic auth at the origin and a mirror in front."""

from __future__ import annotations

import json

import pytest

from occystrap import RunSettings, build_client
from occystrap.errors import DigestMismatchError
from tests.integration.fault_proxy import FaultProxy
from tests.integration.signing import OCI_MANIFEST, TITLE, RegistryWriter

CONTENT = b"the artifact's file\n" * 1000


def _push_artifact(http, repository: str, content: bytes = CONTENT) -> str:
    """An oras-style artifact holding `content` titled docs/notes.txt, tagged v1; its digest."""
    writer = RegistryWriter(http, repository)
    layer = writer.blob(content, "text/plain") | {"annotations": {TITLE: "docs/notes.txt"}}
    pushed = writer.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.notes",
            "config": writer.blob(b"{}", "application/vnd.oci.empty.v1+json"),
            "layers": [layer],
        },
        "v1",
    )
    return pushed.digest


def _settings(registry_basic, **extra) -> RunSettings:
    return RunSettings(
        insecure=True, username=registry_basic.username, password=registry_basic.password, **extra
    )


def test_a_file_is_fetched_with_auth_by_tag_and_by_digest(registry_basic, unique_repo):
    auth = (registry_basic.username, registry_basic.password)
    with registry_basic.client(auth=auth) as http:
        digest = _push_artifact(http, unique_repo)
    settings = _settings(registry_basic)
    with build_client(settings.chain_settings([registry_basic.host])) as client:
        by_tag = client.get(f"oci://{registry_basic.host}/{unique_repo}:v1/docs/notes.txt")
        assert by_tag.status_code == 200, by_tag.text
        assert by_tag.content == CONTENT
        assert by_tag.headers["Content-Type"] == "text/plain"
        by_digest = client.get(f"oci://{registry_basic.host}/{unique_repo}@{digest}/docs/notes.txt")
        assert by_digest.content == CONTENT
        with client.stream(
            "GET", f"oci://{registry_basic.host}/{unique_repo}:v1/docs/notes.txt"
        ) as streamed:
            assert b"".join(streamed.iter_bytes()) == CONTENT
        missing = client.get(f"oci://{registry_basic.host}/{unique_repo}:v1/other.txt")
        assert missing.status_code == 404
        assert "docs/notes.txt" in missing.text
    with build_client(RunSettings(insecure=True).chain_settings()) as anonymous:
        refused = anonymous.get(f"oci://{registry_basic.host}/{unique_repo}:v1/docs/notes.txt")
        assert refused.status_code == 401


@pytest.mark.parametrize("on_mirror", [True, False], ids=["mirror-serves", "falls-through"])
def test_a_mirror_in_front_serves_the_file_without_the_origin_credentials(
    on_mirror, registry_basic, registry_plain, unique_repo
):
    auth = (registry_basic.username, registry_basic.password)
    with registry_basic.client(auth=auth) as http:
        _push_artifact(http, unique_repo)
    if on_mirror:
        with registry_plain.client() as http:
            _push_artifact(http, unique_repo)
    with FaultProxy(registry_basic.url) as origin, FaultProxy(registry_plain.url) as mirror:
        settings = _settings(registry_basic, mirrors=(f"{origin.host}={mirror.url}",))
        with build_client(settings.chain_settings([origin.host])) as client:
            response = client.get(f"oci://{origin.host}/{unique_repo}:v1/docs/notes.txt")
        assert response.status_code == 200, response.text
        assert response.content == CONTENT
        mirror_blobs = mirror.requests_matching(r"/blobs/", method="GET")
        origin_blobs = origin.requests_matching(r"/blobs/", method="GET")
        assert [r for r in mirror.requests if "authorization" in r.headers] == []
    if on_mirror:
        assert len(mirror_blobs) == 1 and origin_blobs == []
    else:
        assert len(origin_blobs) == 1


def test_a_blob_that_fails_its_digest_raises_while_read(registry_plain, unique_repo):
    """A registry checks a blob's digest at upload, so the tests' writer pushes a manifest whose
    layer descriptor states the wrong size (the CNCF registry does not check sizes)."""
    with registry_plain.client() as http:
        writer = RegistryWriter(http, unique_repo)
        layer = writer.blob(CONTENT, "text/plain")
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": writer.blob(b"{}", "application/vnd.oci.empty.v1+json"),
            "layers": [layer | {"size": layer["size"] - 1, "annotations": {TITLE: "f"}}],
        }
        answer = http.put(
            f"/v2/{unique_repo}/manifests/v1",
            content=json.dumps(document).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert answer.status_code == 201, answer.text
    with (
        build_client(RunSettings(insecure=True).chain_settings()) as client,
        pytest.raises(DigestMismatchError),
    ):
        client.get(f"oci://{registry_plain.host}/{unique_repo}:v1/f")
