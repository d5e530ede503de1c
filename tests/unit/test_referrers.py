"""Referrer discovery through the real middleware chain, mocked at the httpcore level: the OCI
1.1 referrers API (pages, the artifactType filter), the referrers tag schema a registry without
the API falls back to, cosign's tags, and recursion."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import OccystrapError, RegistryError
from occystrap.graph import Node, put_missing_blobs
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.registry.client import RegistryClient
from occystrap.registry.referrers import (
    FOUND_BY_API,
    FOUND_BY_COSIGN,
    FOUND_BY_TAG,
    REFERRERS_TAG,
    add_to_referrers_index,
    copy_referrers,
    cosign_tags,
    descriptor_of,
    discover,
    names_referrers,
    referrers_tag,
    referrers_tags_of,
)
from occystrap.registry.store import RegistryStore

BASE = "https://registry.test"
REPO = "team/app"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SPDX = "application/spdx+json"
SIGNATURE = "application/vnd.example.signature"


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _artifact(artifact_type: str, subject: str | None, salt: str) -> bytes:
    document: dict = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": _digest(b"{}"),
            "size": 2,
        },
        "layers": [{"mediaType": "text/plain", "digest": _digest(salt.encode()), "size": 4}],
    }
    if subject is not None:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 10}
    return json.dumps(document).encode()


def _entry(raw: bytes, artifact_type: str) -> dict:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": _digest(raw),
        "size": len(raw),
        "artifactType": artifact_type,
    }


def _index(entries: list[dict]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


class FakeRegistry:
    """Answers referrers API pages and manifests by tag from dictionaries."""

    def __init__(self, api: bool) -> None:
        self.api = api
        self.pages: dict[str, list[bytes]] = {}  # subject digest -> API pages
        self.tags: dict[str, bytes] = {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if "/referrers/" in path:
            if not self.api:
                return httpx.Response(404, text="404 page not found")
            subject = path.rsplit("/", 1)[1]
            pages = self.pages.get(subject, [_index([])])
            number = int(request.url.params.get("page", "0"))
            headers = {"Content-Type": OCI_INDEX}
            if number + 1 < len(pages):
                headers["Link"] = f'</v2/{REPO}/referrers/{subject}?page={number + 1}>; rel="next"'
            return httpx.Response(200, content=pages[number], headers=headers)
        tag = path.rsplit("/", 1)[1]
        if tag not in self.tags:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        raw = self.tags[tag]
        media_type = json.loads(raw)["mediaType"]
        return httpx.Response(200, content=raw, headers={"Content-Type": media_type})


def count(referrers) -> int:
    """How many referrers a forest holds, at every depth."""
    return sum(1 for top in referrers for _ in top.walk())


def _serve(fake: FakeRegistry):
    router = respx.mock(using="httpcore", assert_all_called=False)
    router.route(host="registry.test").mock(side_effect=fake)
    return router


IMAGE = _digest(b"the image")


def test_api_pages_are_followed_and_each_referrer_is_asked_for_its_own():
    sbom = _artifact(SPDX, IMAGE, "sbom")
    signature = _artifact(SIGNATURE, IMAGE, "sig1")
    sbom_signature = _artifact(SIGNATURE, _digest(sbom), "sig2")
    fake = FakeRegistry(api=True)
    fake.pages[IMAGE] = [_index([_entry(sbom, SPDX)]), _index([_entry(signature, SIGNATURE)])]
    fake.pages[_digest(sbom)] = [_index([_entry(sbom_signature, SIGNATURE)])]
    with _serve(fake), build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        client = RegistryClient(http, "registry.test")
        found = discover(RegistryStore(client, REPO), IMAGE)
    assert [(r.digest, r.found_by) for r in found] == [
        (_digest(sbom), FOUND_BY_API),
        (_digest(signature), FOUND_BY_API),
    ]
    assert [r.digest for r in found[0].referrers] == [_digest(sbom_signature)]
    assert found[0].descriptor.artifact_type == SPDX
    assert count(found) == 3
    # The API answered, so the referrers tag schema was never consulted.
    assert not any(r.url.path.endswith(referrers_tag(IMAGE)) for r in fake.requests)


def test_artifact_type_is_asked_for_and_applied_when_the_registry_ignores_it():
    sbom = _artifact(SPDX, IMAGE, "sbom")
    signature = _artifact(SIGNATURE, IMAGE, "sig1")
    fake = FakeRegistry(api=True)
    fake.pages[IMAGE] = [_index([_entry(sbom, SPDX), _entry(signature, SIGNATURE)])]
    with _serve(fake), build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        client = RegistryClient(http, "registry.test")
        found = discover(RegistryStore(client, REPO), IMAGE, artifact_type=SPDX)
    assert [r.digest for r in found] == [_digest(sbom)]
    first = next(r for r in fake.requests if "/referrers/" in r.url.path)
    assert first.url.params["artifactType"] == SPDX
    assert first.headers["Accept"] == OCI_INDEX


def test_without_the_api_the_tag_index_and_cosign_tags_are_read_recursively():
    sbom = _artifact(SPDX, IMAGE, "sbom")
    signature = _artifact(SIGNATURE, None, "sig1")  # cosign's: no subject, found by its tag
    sbom_signature = _artifact(SIGNATURE, None, "sig2")
    fake = FakeRegistry(api=False)
    fake.tags[referrers_tag(IMAGE)] = _index([_entry(sbom, SPDX)])
    fake.tags[cosign_tags(IMAGE)[0]] = signature
    fake.tags[cosign_tags(_digest(sbom))[0]] = sbom_signature
    with _serve(fake), build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        client = RegistryClient(http, "registry.test")
        found = discover(RegistryStore(client, REPO), IMAGE)
    assert [(r.digest, r.found_by, r.tag) for r in found] == [
        (_digest(sbom), FOUND_BY_TAG, None),
        (_digest(signature), FOUND_BY_COSIGN, cosign_tags(IMAGE)[0]),
    ]
    assert [(r.digest, r.tag) for r in found[0].referrers] == [
        (_digest(sbom_signature), cosign_tags(_digest(sbom))[0])
    ]
    assert found[1].descriptor.artifact_type == SIGNATURE
    assert found[1].descriptor.size == len(signature)


def test_a_cycle_of_referrers_ends():
    first = _artifact(SIGNATURE, IMAGE, "one")
    second = _artifact(SIGNATURE, _digest(first), "two")
    fake = FakeRegistry(api=True)
    fake.pages[IMAGE] = [_index([_entry(first, SIGNATURE)])]
    fake.pages[_digest(first)] = [_index([_entry(second, SIGNATURE)])]
    fake.pages[_digest(second)] = [_index([_entry(first, SIGNATURE)])]  # a broken store
    with _serve(fake), build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        client = RegistryClient(http, "registry.test")
        found = discover(RegistryStore(client, REPO), IMAGE)
    assert count(found) == 3  # first, second, and first again as a leaf


def test_an_api_error_other_than_404_is_an_error(client):
    with respx.mock(using="httpcore") as router:
        router.get(url__startswith=f"{BASE}/v2/{REPO}/referrers/").mock(
            return_value=httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
        )
        with pytest.raises(RegistryError):
            client.list_referrers(REPO, IMAGE)


def test_an_api_answer_that_is_not_an_index_is_refused(client):
    with respx.mock(using="httpcore") as router:
        router.get(url__startswith=f"{BASE}/v2/{REPO}/referrers/").mock(
            return_value=httpx.Response(200, content=b"[1, 2]")
        )
        with pytest.raises(RegistryError, match="broken index"):
            client.list_referrers(REPO, IMAGE)


def test_referrer_tags():
    digest = "sha256:" + "ab" * 32
    assert referrers_tag(digest) == "sha256-" + "ab" * 32
    assert cosign_tags(digest) == [f"sha256-{'ab' * 32}{s}" for s in (".sig", ".att", ".sbom")]
    assert len(referrers_tag("sha512:" + "c" * 128)) == 128
    assert all(
        REFERRERS_TAG.fullmatch(tag) for tag in [referrers_tag(digest), *cosign_tags(digest)]
    )
    assert not REFERRERS_TAG.fullmatch("latest")


# -- writing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryBlob:
    data: bytes
    local = True

    def open(self):
        return contextlib.nullcontext(io.BytesIO(self.data))


class MemoryStore:
    """A Store (occystrap.graph) in memory; `api` says whether it indexes subjects itself."""

    def __init__(self, api: bool) -> None:
        self.api = api
        self.manifests: dict[str, tuple[bytes, str]] = {}  # digest -> (raw, media type)
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}

    def referrers_api(self, digest, artifact_type):
        if not self.api:
            return None
        found = []
        for raw, media_type in self.manifests.values():
            document = json.loads(raw)
            if document.get("subject", {}).get("digest") == digest:
                found.append(descriptor_of(raw, media_type, _digest(raw)))
        return found

    def manifest_at(self, reference):
        digest = self.tags.get(reference, reference)
        if digest not in self.manifests:
            return None
        raw, media_type = self.manifests[digest]
        return raw, media_type, digest

    def has_blob(self, descriptor):
        return descriptor.digest in self.blobs

    def manifest(self, descriptor):
        raw, media_type = self.manifests[descriptor.digest]
        return Node(raw, media_type)

    def blob(self, descriptor):
        return MemoryBlob(self.blobs[descriptor.digest])

    def put_blob(self, descriptor, opener):
        with opener() as source:
            self.blobs[descriptor.digest] = source.read()
            assert source.read() == b""

    def put_blobs(self, blobs):
        put_missing_blobs(self, blobs)

    def put_manifest(self, reference, raw, media_type):
        self.manifests[_digest(raw)] = (raw, media_type)
        if ":" not in reference:
            self.tags[reference] = _digest(raw)
        return self.api and "subject" in json.loads(raw)

    def add_artifact(self, artifact_type: str, subject: str | None, salt: str) -> bytes:
        raw = _artifact(artifact_type, subject, salt)
        for data in (b"{}", salt.encode()):
            self.blobs[_digest(data)] = data
        self.put_manifest(_digest(raw), raw, OCI_MANIFEST)
        return raw


def _referrers_index(store: MemoryStore, subject: str) -> list[str]:
    found = store.manifest_at(referrers_tag(subject))
    return [] if found is None else [e["digest"] for e in json.loads(found[0])["manifests"]]


def test_a_destination_with_the_api_gets_no_referrers_tag():
    source, destination = MemoryStore(api=True), MemoryStore(api=True)
    sbom = source.add_artifact(SPDX, IMAGE, "sbom")
    found = discover(source, IMAGE)
    assert copy_referrers(source, destination, IMAGE, found) == 1
    assert destination.manifest_at(_digest(sbom))[0] == sbom
    assert destination.manifest_at(referrers_tag(IMAGE)) is None
    assert [r.digest for r in discover(destination, IMAGE)] == [_digest(sbom)]


def test_a_destination_without_the_api_gets_a_merged_referrers_tag_index():
    source, destination = MemoryStore(api=True), MemoryStore(api=False)
    sbom = source.add_artifact(SPDX, IMAGE, "sbom")
    signature = source.add_artifact(SIGNATURE, _digest(sbom), "sig1")
    already = destination.add_artifact(SIGNATURE, IMAGE, "theirs")
    add_to_referrers_index(
        destination, IMAGE, descriptor_of(already, OCI_MANIFEST, _digest(already))
    )

    for _ in range(2):  # a second copy adds nothing twice
        assert copy_referrers(source, destination, IMAGE, discover(source, IMAGE)) == 2
    assert _referrers_index(destination, IMAGE) == [_digest(already), _digest(sbom)]
    assert _referrers_index(destination, _digest(sbom)) == [_digest(signature)]
    entry = json.loads(destination.manifest_at(referrers_tag(IMAGE))[0])["manifests"][1]
    assert entry["artifactType"] == SPDX
    assert destination.blobs[_digest(b"sbom")] == b"sbom"


def test_a_referrers_tag_that_is_not_an_index_is_left_alone():
    source, destination = MemoryStore(api=True), MemoryStore(api=False)
    source.add_artifact(SPDX, IMAGE, "sbom")
    squatter = destination.add_artifact(SIGNATURE, None, "squat")
    destination.tags[referrers_tag(IMAGE)] = _digest(squatter)
    with pytest.raises(OccystrapError, match="not a referrers index"):
        copy_referrers(source, destination, IMAGE, discover(source, IMAGE))
    assert destination.manifest_at(referrers_tag(IMAGE))[0] == squatter


def test_put_manifest_reports_whether_the_registry_indexed_the_subject(client):
    with respx.mock(using="httpcore") as router:
        router.put(f"{BASE}/v2/{REPO}/manifests/a").mock(
            return_value=httpx.Response(201, headers={"OCI-Subject": IMAGE})
        )
        router.put(f"{BASE}/v2/{REPO}/manifests/b").mock(return_value=httpx.Response(201))
        assert client.put_manifest(REPO, "a", b"{}", OCI_MANIFEST).subject_indexed
        assert not client.put_manifest(REPO, "b", b"{}", OCI_MANIFEST).subject_indexed


def test_a_cosign_tag_holding_other_signatures_is_not_replaced(caplog):
    source, destination = MemoryStore(api=False), MemoryStore(api=False)
    signature = source.add_artifact(SIGNATURE, None, "ours")
    source.tags[cosign_tags(IMAGE)[0]] = _digest(signature)
    theirs = destination.add_artifact(SIGNATURE, None, "theirs")
    destination.tags[cosign_tags(IMAGE)[0]] = _digest(theirs)
    assert copy_referrers(source, destination, IMAGE, discover(source, IMAGE)) == 0
    assert destination.manifest_at(cosign_tags(IMAGE)[0])[0] == theirs
    assert "it is kept" in caplog.text


@given(st.binary(max_size=64), st.sampled_from(["sha256", "sha512"]))
def test_every_tag_keeping_a_digests_referrers_is_known_as_one(data, algorithm):
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    assert all(names_referrers(tag) for tag in referrers_tags_of(digest))


@pytest.mark.parametrize(
    "tag", ["latest", "sha-" + "a" * 40, "build-" + "b" * 40, "sha256-" + "c" * 63, None]
)
def test_image_tags_that_look_like_referrers_tags_are_not_taken_for_them(tag):
    assert not names_referrers(tag)
