"""Referrers against the real registry (which has no referrers API, so the referrers tag schema
and cosign's tags are what is read and written): `occystrap referrers` lists what the tests'
own writer pushed."""

from __future__ import annotations

import json

from tests.integration.cli import registry_flags, run_occystrap
from tests.integration.signing import (
    SPDX,
    RegistryWriter,
    signing_key,
    tag_for,
)


def test_referrers_lists_the_tree_found_by_tag_schema_and_cosign_tags(registry_plain, unique_repo):
    key = signing_key()
    with registry_plain.client() as http:
        writer = RegistryWriter(http, unique_repo)
        image = writer.image("listed", tag="v1")
        sbom = writer.sbom(image)
        image_signature = writer.cosign_sign(image, key, f"{registry_plain.host}/{unique_repo}")
        sbom_signature = writer.cosign_sign(sbom, key, f"{registry_plain.host}/{unique_repo}")
    uri = f"registry://{registry_plain.host}/{unique_repo}:v1"

    listed = json.loads(
        run_occystrap(*registry_flags(registry_plain), "-O", "json", "referrers", uri).stdout
    )
    assert listed["digest"] == image.digest
    by_digest = {entry["digest"]: entry for entry in listed["referrers"]}
    assert set(by_digest) == {sbom.digest, image_signature.digest}
    assert by_digest[sbom.digest]["artifactType"] == SPDX
    assert by_digest[sbom.digest]["foundBy"] == "referrers tag"
    assert by_digest[image_signature.digest]["tag"] == tag_for(image.digest, ".sig")
    [under_sbom] = by_digest[sbom.digest]["referrers"]
    assert under_sbom["digest"] == sbom_signature.digest
    assert under_sbom["foundBy"] == "cosign tag"

    text = run_occystrap(*registry_flags(registry_plain), "referrers", uri).stdout.splitlines()
    assert text[0] == f"{registry_plain.host}/{unique_repo}:v1@{image.digest}"
    assert any(line.startswith("│   └── ") and sbom_signature.digest in line for line in text)

    only_sboms = json.loads(
        run_occystrap(
            *registry_flags(registry_plain), "-O", "json", "referrers", uri, "--artifact-type", SPDX
        ).stdout
    )
    assert [entry["digest"] for entry in only_sboms["referrers"]] == [sbom.digest]
