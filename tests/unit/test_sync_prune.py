"""Pruning a registry repository as the run finds it: a stale referrers tag stays while a
tag that stays holds the manifest it refers to (or an index listing it), and goes once
nothing holds it."""

from __future__ import annotations

import hashlib
import json

import pytest
import respx

from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.registry.client import RegistryClient
from occystrap.registry.referrers import referrers_tag
from occystrap.sync.plan import PRUNE, PlannedImage
from occystrap.sync.run import _prune_repository

BASE = "https://registry.test/v2/team/app"
IMAGE = "sha256:" + "a" * 64
REFERRERS_INDEX = "sha256:" + "b" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PLATFORM = "sha256:" + "c" * 64
INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": PLATFORM, "size": 500}],
    }
).encode()
INDEX_DIGEST = "sha256:" + hashlib.sha256(INDEX).hexdigest()


def _serve(tags: dict[str, str]) -> respx.MockRouter:
    """A registry holding `tags` (tag -> digest); it records DELETEs."""
    router = respx.mock(using="httpcore", assert_all_called=False)
    router.get(f"{BASE}/tags/list").respond(json={"name": "team/app", "tags": list(tags)})
    for tag, digest in tags.items():
        media_type = OCI_INDEX if digest == INDEX_DIGEST else OCI_MANIFEST
        headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
        router.head(f"{BASE}/manifests/{tag}").respond(200, headers=headers)
    router.get(f"{BASE}/manifests/{INDEX_DIGEST}").respond(
        200, content=INDEX, headers={"Content-Type": OCI_INDEX}
    )
    router.delete(url__startswith=f"{BASE}/manifests/").respond(202)
    return router


@pytest.mark.parametrize(
    ("subject", "tags", "status", "error", "deletes"),
    [
        (IMAGE, {"a": IMAGE}, "kept", "refers to the manifest of a", 0),
        (IMAGE, {}, "pruned", None, 1),
        (PLATFORM, {"a": INDEX_DIGEST}, "kept", "refers to a platform manifest of a", 0),
        (PLATFORM, {"a": IMAGE}, "pruned", None, 1),
    ],
    ids=[
        "its manifest is held",
        "nothing holds its manifest",
        "an index held lists its manifest",
        "no index held lists its manifest",
    ],
)
def test_a_stale_referrers_tag_follows_the_manifest_it_refers_to(
    subject, tags, status, error, deletes
):
    stale = referrers_tag(subject)
    planned = PlannedImage("", f"registry://registry.test/team/app:{stale}", PRUNE)
    with (
        _serve({**tags, stale: REFERRERS_INDEX}) as router,
        build_client(ChainSettings(NetworkSettings(retries=0))) as http,
    ):
        client = RegistryClient(http, "registry.test")
        results = _prune_repository(client, "team/app", {stale: planned})
        sent = [call.request for call in router.calls if call.request.method == "DELETE"]
    assert [(result.status, result.error) for result in results] == [(status, error)]
    assert [request.url.path.rpartition("/")[2] for request in sent] == [REFERRERS_INDEX] * deletes
