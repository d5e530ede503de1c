"""Referrers against the real registry (which has no referrers API, so the referrers tag schema
and cosign's tags are what is read and written): `occystrap referrers` lists what the tests'
own writer pushed."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from tests.integration.cli import assert_one_line_error, registry_flags, run_occystrap
from tests.integration.fault_proxy import FaultProxy
from tests.integration.images import run_skopeo
from tests.integration.signing import (
    SPDX,
    ArchiveReader,
    Pushed,
    RegistryReader,
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


def _signed_index(registry, repository: str, key) -> dict:
    """The tests' writer pushes a two-platform index and, by tag schema and cosign's tags: a
    signature of the index, an SBOM of the amd64 manifest, a signature of that SBOM, and a
    signature of the arm64 manifest."""
    identity = f"{registry.host}/{repository}"
    with registry.client() as http:
        writer = RegistryWriter(http, repository)
        index, (amd64, arm64) = writer.index("signed", tag="v1")
        sbom = writer.sbom(amd64)
        writer.cosign_sign(index, key, identity)
        writer.cosign_sign(sbom, key, identity)
        writer.cosign_sign(arm64, key, identity)
    return {"index": index, "amd64": amd64, "arm64": arm64, "sbom": sbom}


def _check_signed_copy(http, repository: str, pushed: dict, key) -> RegistryReader:
    """The tests' own reader, straight from the destination registry: every signature
    verifies with the public key and the SBOM is listed as the amd64 manifest's referrer."""
    reader = RegistryReader(http, repository)
    public = key.public_key()
    for name in ("index", "arm64", "sbom"):
        assert reader.verify_cosign(pushed[name].digest, public) == 1, name
    listed = reader.referrers(pushed["amd64"].digest)
    assert {"digest": pushed["sbom"].digest, "artifactType": SPDX} in [
        {"digest": entry["digest"], "artifactType": entry.get("artifactType")} for entry in listed
    ]
    assert reader.manifest(pushed["sbom"].digest) == pushed["sbom"].raw
    return reader


def test_process_referrers_copies_signatures_and_sboms_registry_to_registry(
    registry_plain, registry_basic, unique_repo
):
    key = signing_key()
    pushed = _signed_index(registry_plain, unique_repo, key)
    auth = (registry_basic.username, registry_basic.password)
    with registry_basic.client(auth=auth) as http:
        # The destination already lists a referrer of the amd64 manifest: it must stay listed.
        writer = RegistryWriter(http, unique_repo)
        writer.image("signed-amd64", arch="amd64")  # the same bytes as the source's
        other = writer.sbom(pushed["amd64"], name="other.spdx.json")

    result = run_occystrap(
        "--insecure",
        "--dest-creds",
        f"{registry_basic.username}:{registry_basic.password}",
        "process",
        "--referrers",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"registry://{registry_basic.host}/{unique_repo}:v1",
    )
    assert "4 referrers" in result.stderr.splitlines()[-1], result.stderr

    with registry_basic.client(auth=auth) as http:
        reader = _check_signed_copy(http, unique_repo, pushed, key)
        kept = {entry["digest"] for entry in reader.referrers(pushed["amd64"].digest)}
        assert kept == {pushed["sbom"].digest, other.digest}
        assert reader.manifest("v1") == pushed["index"].raw


def test_referrers_cross_an_air_gap_through_an_oci_layout(
    registry_plain, registry_basic, unique_repo, tmp_path
):
    key = signing_key()
    pushed = _signed_index(registry_plain, unique_repo, key)
    layout = tmp_path / "layout"
    run_occystrap(
        "--insecure",
        "process",
        "--referrers",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"oci-layout://{layout}",
    )
    index_json = json.loads((layout / "index.json").read_text())
    names = {
        entry["annotations"]["org.opencontainers.image.ref.name"]
        for entry in index_json["manifests"]
    }
    assert "v1" in names and tag_for(pushed["amd64"].digest) in names
    in_layout = json.loads(
        run_occystrap("-O", "json", "referrers", f"oci-layout://{layout}?tag=v1").stdout
    )
    assert in_layout["digest"] == pushed["index"].digest
    [signature] = in_layout["referrers"]
    assert signature["tag"] == tag_for(pushed["index"].digest, ".sig")

    result = run_occystrap(
        "--insecure",
        "--dest-creds",
        f"{registry_basic.username}:{registry_basic.password}",
        "process",
        "--referrers",
        f"oci-layout://{layout}",
        f"registry://{registry_basic.host}/{unique_repo}-again:v1",
    )
    assert "4 referrers" in result.stderr.splitlines()[-1], result.stderr
    auth = (registry_basic.username, registry_basic.password)
    with registry_basic.client(auth=auth) as http:
        _check_signed_copy(http, f"{unique_repo}-again", pushed, key)


def test_referrers_to_a_place_that_keeps_none_is_refused_in_one_line(
    registry_plain, unique_repo, tmp_path
):
    with registry_plain.client() as http:
        RegistryWriter(http, unique_repo).image("lonely", tag="v1")
    target = tmp_path / "image.tar"
    result = run_occystrap(
        "--insecure",
        "process",
        "--referrers",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"tar://{target}",
        check=False,
    )
    assert_one_line_error(result, "--referrers needs registry://, oci-layout://")
    assert not target.exists()


def test_only_the_platforms_copied_bring_their_referrers(registry_plain, unique_repo):
    key = signing_key()
    pushed = _signed_index(registry_plain, unique_repo, key)
    result = run_occystrap(
        "--insecure",
        "process",
        "--referrers",
        "--platform",
        "linux/arm64",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"registry://{registry_plain.host}/{unique_repo}-arm64:v1",
    )
    assert "1 referrer," in result.stderr.splitlines()[-1], result.stderr
    with registry_plain.client() as http:
        reader = RegistryReader(http, f"{unique_repo}-arm64")
        assert reader.manifest("v1") == pushed["arm64"].raw
        assert reader.verify_cosign(pushed["arm64"].digest, key.public_key()) == 1
        assert reader.manifest(tag_for(pushed["index"].digest, ".sig")) is None
        assert reader.referrers(pushed["amd64"].digest) == []


def _signed_image(registry, repository: str, key) -> tuple[Pushed, Pushed, set[str]]:
    """An image with an SBOM and a cosign signature, pushed by the tests' own writer; also
    the digests of the referrers' blobs (their configs and layers)."""
    with registry.client() as http:
        writer = RegistryWriter(http, repository)
        image = writer.image(f"mounted-{repository}", tag="v1")
        sbom = writer.sbom(image)
        signature = writer.cosign_sign(image, key, f"{registry.host}/{repository}")
    blobs = set()
    for referrer in (sbom, signature):
        document = json.loads(referrer.raw)
        blobs |= {document["config"]["digest"]} | {d["digest"] for d in document["layers"]}
    return image, sbom, blobs


def _mounted_and_uploaded(proxy: FaultProxy, repository: str) -> tuple[dict[str, str], set[str]]:
    """What the proxy saw go into `repository`: digest -> the repository it was mounted from,
    and the digests uploaded (an upload ends with PUT ...?digest=)."""
    mounted = {}
    for request in proxy.requests_matching(rf"^/v2/{repository}/blobs/uploads/\?", "POST"):
        query = parse_qs(urlsplit(request.path).query)
        if "mount" in query:
            mounted[query["mount"][0]] = query["from"][0]
    uploaded = {
        parse_qs(urlsplit(request.path).query)["digest"][0]
        for request in proxy.requests_matching(rf"^/v2/{repository}/blobs/uploads/.+", "PUT")
    }
    return mounted, uploaded


def test_referrer_blobs_are_mounted_within_one_registry(fault_proxy, registry_plain, unique_repo):
    """A same-registry copy mounts the referrers' blobs from the source repository, as it
    does the image's: nothing is uploaded (the proxy sees every request)."""
    key = signing_key()
    image, sbom, referrer_blobs = _signed_image(registry_plain, unique_repo, key)
    copy = f"{unique_repo}-copy"
    result = run_occystrap(
        "--insecure",
        "-O",
        "json",
        "process",
        "--referrers",
        f"registry://{fault_proxy.host}/{unique_repo}:v1",
        f"registry://{fault_proxy.host}/{copy}:v1",
    )
    document = json.loads(result.stdout)
    assert document["referrers"] == 2, document
    mounted, uploaded = _mounted_and_uploaded(fault_proxy, copy)
    assert uploaded == set(), fault_proxy.requests
    assert referrer_blobs <= set(mounted), mounted
    assert set(mounted.values()) == {unique_repo}
    assert document["blobs"]["uploaded"] == 0 and document["blobs"]["mounted"] == len(mounted)
    with registry_plain.client() as http:
        reader = RegistryReader(http, copy)
        assert reader.verify_cosign(image.digest, key.public_key()) == 1
        assert sbom.digest in {entry["digest"] for entry in reader.referrers(image.digest)}
        assert reader.manifest(sbom.digest) == sbom.raw


def test_a_second_copy_mounts_the_referrer_blobs_the_first_uploaded(
    registry_plain, registry_no_delete, unique_repo
):
    """Across registries the first copy uploads the referrers' blobs; the second, to another
    repository of the same destination, mounts them from where the blob cache remembers."""
    key = signing_key()
    image, sbom, referrer_blobs = _signed_image(registry_plain, unique_repo, key)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    with FaultProxy(registry_no_delete.url) as proxy:
        first, second = f"{unique_repo}-first", f"{unique_repo}-second"
        for repository in (first, second):
            run_occystrap(
                "--insecure",
                "process",
                "--referrers",
                source,
                f"registry://{proxy.host}/{repository}:v1",
            )
        _, uploaded_first = _mounted_and_uploaded(proxy, first)
        assert referrer_blobs <= uploaded_first
        mounted, uploaded = _mounted_and_uploaded(proxy, second)
        assert uploaded == set(), proxy.requests
        assert referrer_blobs <= set(mounted) and set(mounted.values()) == {first}, mounted
    with registry_no_delete.client() as http:
        reader = RegistryReader(http, second)
        assert reader.verify_cosign(image.digest, key.public_key()) == 1
        assert reader.manifest(sbom.digest) == sbom.raw


def test_an_oci_archive_carries_the_referrers(registry_plain, unique_repo, tmp_path):
    """`--referrers` into an oci-archive packs them as a layout keeps them: the tests' own
    tar reader verifies every signature and finds the SBOM; skopeo still reads the image."""
    key = signing_key()
    pushed = _signed_index(registry_plain, unique_repo, key)
    archive = tmp_path / "signed.oci.tar"
    result = run_occystrap(
        "--insecure",
        "process",
        "--referrers",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"oci-archive://{archive}?tag=v1",
    )
    assert "4 referrers" in result.stderr.splitlines()[-1], result.stderr
    reader = ArchiveReader(archive)
    assert reader.manifest("v1") == pushed["index"].raw
    public = key.public_key()
    for name in ("index", "arm64", "sbom"):
        assert reader.verify_cosign(pushed[name].digest, public) == 1, name
    [listed] = reader.referrers(pushed["amd64"].digest)
    assert listed["digest"] == pushed["sbom"].digest and listed["artifactType"] == SPDX
    assert reader.manifest(pushed["sbom"].digest) == pushed["sbom"].raw
    spdx = json.loads(pushed["sbom"].raw)["layers"][0]
    assert json.loads(reader.blob(spdx))["spdxVersion"] == "SPDX-2.3"

    raw = run_skopeo("inspect", "--raw", f"oci-archive:{archive}:v1").stdout
    assert raw.encode() == pushed["index"].raw
    copied = tmp_path / "copied"
    run_skopeo(
        "copy", "--quiet", "--multi-arch=all", f"oci-archive:{archive}:v1", f"oci:{copied}:v1"
    )
    assert json.loads((copied / "index.json").read_text())["manifests"][0]["digest"] == (
        pushed["index"].digest
    )
