"""Fidelity against the real registry: whatever is stored (a buildx index with attestations,
an SPDX artifact with a subject, a cosign signature, a Helm chart, an unknown config type),
a copy between registries and through an OCI layout keeps every manifest byte for byte.

The objects are pushed by the tests' own writer (plain httpx) and judged by skopeo.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass

import pytest

from tests.integration.cli import assert_one_line_error, registry_flags, run_occystrap
from tests.integration.images import run_skopeo
from tests.integration.signing import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    SPDX,
    Pushed,
    RegistryWriter,
    digest_of,
    signing_key,
    tag_for,
)

IN_TOTO = "application/vnd.in-toto+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
UNKNOWN_CONFIG = "application/vnd.example.gadget.config.v1+json"
UNKNOWN_LAYER = "application/vnd.example.gadget.part.v1"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
REFERENCE_TYPE = "vnd.docker.reference.type"


def _attestation(writer: RegistryWriter, subject: Pushed) -> Pushed:
    """A buildx-style attestation manifest (an in-toto statement about `subject`)."""
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"digest": {"sha256": subject.digest[7:]}}],
            "predicate": {"builder": {"id": "tests"}},
        }
    ).encode()
    config = json.dumps(
        {"architecture": "unknown", "os": "unknown", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    return writer.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": writer.blob(config, OCI_CONFIG),
            "layers": [
                writer.blob(statement, IN_TOTO)
                | {"annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}
            ],
        }
    )


def buildx_index(writer: RegistryWriter, tag: str) -> tuple[Pushed, dict[str, Pushed]]:
    """A three-platform index, each platform with its attestation entry, as buildx pushes."""
    entries = []
    images = {}
    for name in ("amd64", "arm64", "arm/v7"):
        architecture, _, variant = name.partition("/")
        image = writer.image(f"{tag}-{name}", arch=architecture)
        platform = {"os": "linux", "architecture": architecture} | (
            {"variant": variant} if variant else {}
        )
        entries.append(image.descriptor(platform=platform))
        images[name] = image
    for name, image in list(images.items()):
        attestation = _attestation(writer, image)
        images[f"{name}-attestation"] = attestation
        entries.append(
            attestation.descriptor(
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={
                    REFERENCE_DIGEST: image.digest,
                    REFERENCE_TYPE: "attestation-manifest",
                },
            )
        )
    index = writer.manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag)
    return index, images


def helm_chart(writer: RegistryWriter, tag: str) -> Pushed:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        content = b"apiVersion: v2\nname: demo\nversion: 0.1.0\n"
        info = tarfile.TarInfo("demo/Chart.yaml")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    chart = gzip.compress(buffer.getvalue(), mtime=0)
    config = json.dumps({"apiVersion": "v2", "name": "demo", "version": "0.1.0"}).encode()
    return writer.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": writer.blob(config, HELM_CONFIG),
            "layers": [writer.blob(chart, HELM_CHART)],
        },
        tag,
    )


def unknown_artifact(writer: RegistryWriter, tag: str) -> Pushed:
    return writer.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": writer.blob(b'{"gadget": true}', UNKNOWN_CONFIG),
            "layers": [writer.blob(b"\x00\x01 not a tar \xff", UNKNOWN_LAYER)],
            "annotations": {"org.example.note": "nobody knows this type"},
        },
        tag,
    )


@dataclass(frozen=True)
class Stored:
    """What the source repository holds: tag -> the manifest pushed under it."""

    repository: str
    tags: dict[str, Pushed]
    platforms: dict[str, Pushed]


@pytest.fixture(scope="module")
def stored(registry_plain) -> Stored:
    repository = "fidelity/source"
    with registry_plain.client() as http:
        writer = RegistryWriter(http, repository)
        index, platforms = buildx_index(writer, "multi")
        subject = writer.image("signed", tag="signed")
        sbom = writer.sbom(subject)
        writer.manifest(json.loads(sbom.raw), "sbom")  # tagged too, so it can be named
        signature = writer.cosign_sign(subject, signing_key(), f"{registry_plain.host}/x")
        tags = {
            "multi": index,
            "sbom": sbom,
            tag_for(subject.digest, ".sig"): signature,
            "chart": helm_chart(writer, "chart"),
            "gadget": unknown_artifact(writer, "gadget"),
        }
    return Stored(repository, tags, platforms)


def raw_manifest(registry, reference: str) -> bytes:
    """`skopeo inspect --raw` of REPO:TAG or REPO@DIGEST: the manifest's bytes as stored."""
    result = run_skopeo(
        "inspect", "--raw", *registry.skopeo_args(), f"docker://{registry.host}/{reference}"
    )
    return result.stdout.encode()


def _copy(registry, *args: str) -> None:
    run_occystrap(*registry_flags(registry), "process", *args)


def _assert_same_graph(
    registry, source_repo: str, copy_repo: str, tag: str, pushed: Pushed
) -> None:
    copied = raw_manifest(registry, f"{copy_repo}:{tag}")
    assert copied == raw_manifest(registry, f"{source_repo}:{tag}") == pushed.raw
    assert digest_of(copied) == pushed.digest
    document = json.loads(copied)
    for entry in document.get("manifests", []):
        child = raw_manifest(registry, f"{copy_repo}@{entry['digest']}")
        assert child == raw_manifest(registry, f"{source_repo}@{entry['digest']}")
        assert digest_of(child) == entry["digest"]


@pytest.mark.parametrize("tag", ["multi", "sbom", "sig", "chart", "gadget"])
def test_registry_to_registry_keeps_every_byte(registry_plain, stored, unique_repo, tag):
    tag = next(name for name in stored.tags if name == tag or name.endswith("." + tag))
    host = registry_plain.host
    _copy(
        registry_plain,
        f"registry://{host}/{stored.repository}:{tag}",
        f"registry://{host}/{unique_repo}:{tag}",
    )
    _assert_same_graph(registry_plain, stored.repository, unique_repo, tag, stored.tags[tag])


def test_through_an_oci_layout_keeps_every_byte(registry_plain, stored, unique_repo, tmp_path):
    host = registry_plain.host
    layout = tmp_path / "layout"
    for tag in stored.tags:
        _copy(
            registry_plain,
            f"registry://{host}/{stored.repository}:{tag}",
            f"oci-layout://{layout}?tag={tag}",
        )
        in_layout = run_skopeo("inspect", "--raw", f"oci:{layout}:{tag}").stdout.encode()
        assert in_layout == stored.tags[tag].raw
    for tag in stored.tags:
        _copy(
            registry_plain,
            f"oci-layout://{layout}?tag={tag}",
            f"registry://{host}/{unique_repo}:{tag}",
        )
        _assert_same_graph(registry_plain, stored.repository, unique_repo, tag, stored.tags[tag])


def test_narrowing_keeps_the_attestations_of_kept_platforms(registry_plain, stored, unique_repo):
    host = registry_plain.host
    source = f"registry://{host}/{stored.repository}:multi"
    _copy(
        registry_plain,
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        source,
        f"registry://{host}/{unique_repo}:two",
    )
    narrowed = json.loads(raw_manifest(registry_plain, f"{unique_repo}:two"))
    kept = [stored.platforms[name].digest for name in ("amd64", "arm64")]
    attestations = [stored.platforms[f"{name}-attestation"].digest for name in ("amd64", "arm64")]
    assert [entry["digest"] for entry in narrowed["manifests"]] == kept + attestations
    for entry in narrowed["manifests"][2:]:
        assert entry["annotations"][REFERENCE_DIGEST] in kept
    for digest in kept + attestations:
        assert digest_of(raw_manifest(registry_plain, f"{unique_repo}@{digest}")) == digest

    _copy(
        registry_plain, "--platform", "linux/arm/v7", source, f"registry://{host}/{unique_repo}:one"
    )
    assert raw_manifest(registry_plain, f"{unique_repo}:one") == stored.platforms["arm/v7"].raw


@pytest.mark.parametrize(
    ("tag", "kind"), [("sbom", SPDX), ("chart", HELM_CONFIG), ("gadget", UNKNOWN_CONFIG)]
)
@pytest.mark.parametrize("scheme", ["tar", "dir"])
def test_filesystem_destinations_refuse_an_artifact(
    registry_plain, stored, tmp_path, tag, kind, scheme
):
    target = tmp_path / "out"
    result = run_occystrap(
        *registry_flags(registry_plain),
        "process",
        f"registry://{registry_plain.host}/{stored.repository}:{tag}",
        f"{scheme}://{target}",
        check=False,
    )
    assert_one_line_error(result, "is not an image but an artifact", kind)
    assert not target.exists()


def test_one_platform_selector_means_the_same_everywhere(
    registry_plain, stored, unique_repo, tmp_path
):
    """--platform, the global --architecture and the URI's ?arch= select the same manifest,
    copied as it is; digest, manifest and info agree; several platforms where one image is
    needed are refused."""
    host = registry_plain.host
    flags = registry_flags(registry_plain)
    source = f"registry://{host}/{stored.repository}:multi"
    arm64 = stored.platforms["arm64"]
    ways = {
        "flag": (("--platform", "linux/arm64"), source),
        "alias": (("--architecture", "arm64"), source),
        "uri": ((), f"{source}?arch=arm64"),
    }
    for name, (selection, uri) in ways.items():
        global_flags = selection if name == "alias" else ()
        command_flags = selection if name == "flag" else ()
        run_occystrap(
            *flags,
            *global_flags,
            "process",
            *command_flags,
            uri,
            f"registry://{host}/{unique_repo}:{name}",
        )
        assert raw_manifest(registry_plain, f"{unique_repo}:{name}") == arm64.raw
    assert (
        run_occystrap(*flags, "digest", "--platform", "linux/arm64", source).stdout.strip()
        == arm64.digest
    )
    assert (
        run_occystrap(*flags, "--architecture", "arm64", "digest", source).stdout.strip()
        == arm64.digest
    )
    assert (
        run_occystrap(*flags, "manifest", "--platform", "linux/arm64", source).stdout.encode()
        == arm64.raw
    )
    info = json.loads(
        run_occystrap(*flags, "-O", "json", "info", "--platform", "linux/arm64", source).stdout
    )
    assert info["manifest_digest"] == arm64.digest
    several = run_occystrap(
        *flags,
        "process",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        source,
        f"tar://{tmp_path / 'one.tar'}",
        check=False,
    )
    assert_one_line_error(several, "2 platforms asked for", "give one --platform")
    assert not (tmp_path / "one.tar").exists()
