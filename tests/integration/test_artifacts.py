"""`occystrap artifact push/pull` against the real registry, judged by oras-py (an independent
client) and by the tests' own reader; hostile titles and existing files are refused."""

from __future__ import annotations

import json

import oras.client

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.signing import (
    OCI_MANIFEST,
    TITLE,
    RegistryReader,
    RegistryWriter,
    digest_of,
)

README_TYPE = "text/markdown"
ARTIFACT_TYPE = "application/vnd.example.bundle.v1"


def _oras(registry) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=registry.host, insecure=True)


def test_occystrap_push_is_pulled_by_oras_and_listed_as_a_referrer(
    registry_plain, unique_repo, tmp_path
):
    with registry_plain.client() as http:
        image = RegistryWriter(http, unique_repo).image("subject", tag="v1")
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "README.md").write_text("# hello\n")
    (sources / "data.bin").write_bytes(bytes(range(256)) * 1000)
    base = f"registry://{registry_plain.host}/{unique_repo}"

    pushed = run_occystrap(
        "--insecure",
        "artifact",
        "push",
        f"{base}:bundle",
        f"{sources / 'README.md'}:{README_TYPE}",
        str(sources / "data.bin"),
        "--artifact-type",
        ARTIFACT_TYPE,
        "--subject",
        f"{base}:v1",
        "--annotation",
        "org.example.team=infra",
    )
    digest = pushed.stdout.strip()

    with registry_plain.client() as http:
        reader = RegistryReader(http, unique_repo)
        raw = reader.manifest("bundle")
        assert digest_of(raw) == digest
        manifest = json.loads(raw)
        assert manifest["artifactType"] == ARTIFACT_TYPE
        assert manifest["subject"]["digest"] == image.digest
        assert manifest["annotations"] == {"org.example.team": "infra"}
        assert [layer["mediaType"] for layer in manifest["layers"]] == [
            README_TYPE,
            "application/octet-stream",
        ]
        listed = reader.referrers(image.digest)
        assert [(e["digest"], e["artifactType"]) for e in listed] == [(digest, ARTIFACT_TYPE)]

    out = tmp_path / "oras-out"
    _oras(registry_plain).pull(
        target=f"{registry_plain.host}/{unique_repo}:bundle", outdir=str(out)
    )
    assert (out / "README.md").read_text() == "# hello\n"
    assert (out / "data.bin").read_bytes() == (sources / "data.bin").read_bytes()


def test_oras_push_is_pulled_by_occystrap(registry_plain, unique_repo, tmp_path, monkeypatch):
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "config.yaml").write_text("replicas: 3\n")
    (sources / "notes.txt").write_text("pulled by occystrap\n")
    monkeypatch.chdir(sources)  # oras-py titles files by the path it is given
    _oras(registry_plain).push(
        files=["config.yaml", "notes.txt"], target=f"{registry_plain.host}/{unique_repo}:v1"
    )
    out = tmp_path / "out"
    result = run_occystrap(
        "--insecure",
        "artifact",
        "pull",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        str(out),
    )
    assert sorted(path.name for path in out.iterdir()) == ["config.yaml", "notes.txt"]
    assert (out / "config.yaml").read_text() == "replicas: 3\n"
    assert (out / "notes.txt").read_text() == "pulled by occystrap\n"
    assert "pulled 2 files" in result.stderr


def _hostile(registry, repository: str, titles: list[str]) -> str:
    """An artifact whose layers carry `titles`, pushed by the tests' writer."""
    with registry.client() as http:
        writer = RegistryWriter(http, repository)
        layers = [
            writer.blob(f"content {n}".encode(), "text/plain") | {"annotations": {TITLE: title}}
            for n, title in enumerate(titles)
        ]
        writer.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": writer.blob(b"{}", "application/vnd.oci.empty.v1+json"),
                "layers": layers,
            },
            "v1",
        )
    return f"registry://{registry.host}/{repository}:v1"


def test_a_title_climbing_out_of_the_directory_is_refused(registry_plain, unique_repo, tmp_path):
    uri = _hostile(registry_plain, unique_repo, ["fine.txt", "../x"])
    out = tmp_path / "out"
    result = run_occystrap("--insecure", "artifact", "pull", uri, str(out), check=False)
    assert_one_line_error(result, "'../x'", "outside")
    assert not (tmp_path / "x").exists()
    assert not out.exists()  # not even the safe file: nothing is written


def test_an_absolute_title_is_refused(registry_plain, unique_repo, tmp_path):
    uri = _hostile(registry_plain, unique_repo, ["/tmp/evil"])
    result = run_occystrap("--insecure", "artifact", "pull", uri, str(tmp_path / "o"), check=False)
    assert_one_line_error(result, "'/tmp/evil'", "outside")


def test_an_existing_file_is_never_replaced(registry_plain, unique_repo, tmp_path):
    uri = _hostile(registry_plain, unique_repo, ["keep.txt", "new.txt"])
    (tmp_path / "keep.txt").write_text("mine")
    result = run_occystrap("--insecure", "artifact", "pull", uri, str(tmp_path), check=False)
    assert_one_line_error(result, "keep.txt", "already exists")
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "new.txt").exists()


def test_artifact_round_trip_through_an_oci_layout(tmp_path):
    source = tmp_path / "sbom.spdx.json"
    source.write_text('{"spdxVersion": "SPDX-2.3"}')
    layout = tmp_path / "layout"
    run_occystrap(
        "artifact",
        "push",
        f"oci-layout://{layout}?tag=sbom",
        f"{source}:application/spdx+json",
        "--artifact-type",
        "application/spdx+json",
    )
    out = tmp_path / "out"
    run_occystrap("artifact", "pull", f"oci-layout://{layout}?tag=sbom", str(out))
    assert (out / "sbom.spdx.json").read_text() == source.read_text()


def test_artifact_push_to_a_tarball_is_refused(tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("a")
    result = run_occystrap(
        "artifact",
        "push",
        f"tar://{tmp_path / 'x.tar'}",
        str(source),
        "--artifact-type",
        "x/y",
        check=False,
    )
    assert_one_line_error(result, "artifact push needs registry://, oci-layout://")
