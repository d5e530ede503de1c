"""oci-layout:// and OCI archives, checked with skopeo (oci:, oci-archive:, docker-archive:)
against the real registry: digests kept both ways, shared layouts, hostile layouts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, assert_one_line_error, registry_flags, run_occystrap
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration

LAYERS = [random_layer(400_000, 11), random_layer(200_000, 12), {"etc/motd": b"hello\n"}]
PLATFORMS = {
    ("linux", "amd64"): [random_layer(200_000, 21), {"arch": b"amd64"}],
    ("linux", "arm64"): [random_layer(200_000, 22), {"arch": b"arm64"}],
}
SHARED = {"shared/base": b"the same in both images\n" * 100}
REF_NAME = "org.opencontainers.image.ref.name"


def _raw_manifest(registry, ref: str) -> str:
    """The manifest (or index) bytes the registry serves for REPO:TAG, as text."""
    return run_skopeo(
        "inspect", "--raw", *registry.skopeo_args(), f"docker://{registry.host}/{ref}"
    ).stdout


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _digest_in(stderr: str) -> str:
    found = re.search(r"sha256:[0-9a-f]{64}", stderr.strip().splitlines()[-1])
    assert found, stderr
    return found.group(0)


def _seed(registry, repo: str, tmp_path: Path, manifest_format: str = "v2s2") -> str:
    build_oci_layout(tmp_path / "seed", LAYERS)
    push_with_skopeo(tmp_path / "seed", registry, repo, "v1", manifest_format)
    return f"registry://{registry.host}/{repo}:v1"


@pytest.mark.parametrize("manifest_format", ["v2s2", "oci"])
def test_registry_to_layout_keeps_the_manifest_and_skopeo_verifies_it(
    registry_plain, unique_repo, tmp_path, manifest_format
):
    source = _seed(registry_plain, unique_repo, tmp_path, manifest_format)
    layout = tmp_path / "layout"
    result = run_occystrap(
        *registry_flags(registry_plain), "process", source, f"oci-layout://{layout}?tag=v1"
    )
    original = _raw_manifest(registry_plain, f"{unique_repo}:v1")
    # skopeo looks a tag up only among OCI-typed entries; a Docker manifest, kept as it is,
    # is found as the layout's only image.
    reference = f"oci:{layout}:v1" if manifest_format == "oci" else f"oci:{layout}"
    assert run_skopeo("inspect", "--raw", reference).stdout == original
    assert _digest_in(result.stderr) == _sha256(original)
    run_skopeo("copy", "--quiet", reference, f"dir:{tmp_path / 'check'}")  # verifies every blob
    stored = sorted(path.name for path in (layout / "blobs" / "sha256").iterdir())
    manifest = json.loads(original)
    expected = [manifest["config"]["digest"], _sha256(original)]
    expected += [layer["digest"] for layer in manifest["layers"]]
    assert stored == sorted(digest.partition(":")[2] for digest in expected)
    again = run_occystrap(
        *registry_flags(registry_plain), "process", source, f"oci-layout://{layout}?tag=v1"
    )
    summary = again.stderr.strip().splitlines()[-1]
    assert "blobs 0 written, 0 mounted, 4 already there; 0 B downloaded" in summary, summary


def test_a_same_size_corrupt_blob_in_a_layout_is_written_again(
    registry_plain, unique_repo, tmp_path
):
    source = _seed(registry_plain, unique_repo, tmp_path, "oci")
    layout = tmp_path / "layout"
    flags = registry_flags(registry_plain)
    run_occystrap(*flags, "process", source, f"oci-layout://{layout}?tag=v1")
    manifest = json.loads(_raw_manifest(registry_plain, f"{unique_repo}:v1"))
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].partition(":")[2]
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(data))
    again = run_occystrap(*flags, "process", source, f"oci-layout://{layout}?tag=v1")
    assert "the stored blob is corrupt" in again.stderr, again.stderr
    assert (
        "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        == (manifest["layers"][0]["digest"])
    )
    run_skopeo("copy", "--quiet", f"oci:{layout}:v1", f"dir:{tmp_path / 'check'}")


def test_registry_layout_registry_round_trip_keeps_the_digest(
    registry_plain, unique_repo, tmp_path
):
    source = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    layout = f"oci-layout://{tmp_path / 'layout'}"
    run_occystrap(*flags, "process", source, layout)  # tagged like the source: v1
    back = f"registry://{registry_plain.host}/{unique_repo}-back:v2"
    result = run_occystrap(*flags, "process", f"{layout}?tag=v1", back)
    original = _raw_manifest(registry_plain, f"{unique_repo}:v1")
    assert _raw_manifest(registry_plain, f"{unique_repo}-back:v2") == original
    assert _digest_in(result.stderr) == _sha256(original)


def test_index_round_trip_keeps_the_index_digest(registry_plain, unique_repo, tmp_path):
    build_multiarch_layout(tmp_path / "multi", PLATFORMS)
    push_multiarch_with_skopeo(tmp_path / "multi", registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    layout = tmp_path / "layout"
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    run_occystrap(*flags, "process", source, f"oci-layout://{layout}?tag=multi")
    original = _raw_manifest(registry_plain, f"{unique_repo}:v1")
    assert run_skopeo("inspect", "--raw", f"oci:{layout}:multi").stdout == original
    run_skopeo(
        "copy",
        "--quiet",
        "--multi-arch=all",
        f"oci:{layout}:multi",
        f"oci:{tmp_path / 'check'}:all",
    )
    back = f"registry://{registry_plain.host}/{unique_repo}-back:v1"
    result = run_occystrap(*flags, "process", f"oci-layout://{layout}", back)
    assert _raw_manifest(registry_plain, f"{unique_repo}-back:v1") == original
    assert _digest_in(result.stderr) == _sha256(original)
    for entry in json.loads(original)["manifests"]:
        platform = entry["platform"]["architecture"]
        assert _raw_manifest(registry_plain, f"{unique_repo}-back@{entry['digest']}"), platform


def test_layout_written_by_skopeo_is_read(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    layout = tmp_path / "by-skopeo"
    run_skopeo(
        "copy",
        "--quiet",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}:v1",
        f"oci:{layout}:mine",
    )
    output = tmp_path / "out.tar"
    run_occystrap("process", f"oci-layout://{layout}", f"tar://{output}")
    archive = json.loads(run_skopeo("inspect", f"docker-archive:{output}").stdout)
    config = skopeo_inspect(registry_plain, f"{unique_repo}:v1", config=True)
    assert archive["Layers"] == config["rootfs"]["diff_ids"]
    written = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{output}").stdout)
    assert written == config
    details = json.loads(
        run_occystrap("--output-format", "json", "info", f"oci-layout://{layout}?tag=mine").stdout
    )
    manifest = run_skopeo("inspect", "--raw", f"oci:{layout}:mine").stdout
    assert details["manifest_digest"] == _sha256(manifest)
    assert [layer["diff_id"] for layer in details["layers"]] == config["rootfs"]["diff_ids"]


def test_oci_archive_tar_input(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    archive = tmp_path / "image.oci.tar"
    run_skopeo(
        "copy",
        "--quiet",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}:v1",
        f"oci-archive:{archive}:v1",
    )
    output = tmp_path / "out.tar"
    run_occystrap("process", f"tar://{archive}", f"tar://{output}")
    config = skopeo_inspect(registry_plain, f"{unique_repo}:v1", config=True)
    written = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{output}").stdout)
    assert written == config
    flags = registry_flags(registry_plain)
    back = f"registry://{registry_plain.host}/{unique_repo}-from-archive:v1"
    run_occystrap(*flags, "process", f"tar://{archive}", back)
    layout_manifest = run_skopeo("inspect", "--raw", f"oci-archive:{archive}").stdout
    assert _raw_manifest(registry_plain, f"{unique_repo}-from-archive:v1") == layout_manifest
    details = json.loads(
        run_occystrap("--output-format", "json", "info", f"tar://{archive}").stdout
    )
    assert details["manifest_digest"] == _sha256(layout_manifest)


def test_docker_save_tarball_into_a_layout_keeps_layers_uncompressed(tmp_path):
    build_oci_layout(tmp_path / "seed", LAYERS)
    tarball = tmp_path / "saved.tar"
    run_skopeo("copy", "--quiet", f"oci:{tmp_path / 'seed'}:latest", f"docker-archive:{tarball}")
    layout = tmp_path / "layout"
    run_occystrap("process", f"tar://{tarball}", f"oci-layout://{layout}?tag=saved")
    manifest = json.loads(run_skopeo("inspect", "--raw", f"oci:{layout}:saved").stdout)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar"
    }
    run_skopeo("copy", "--quiet", f"oci:{layout}:saved", f"dir:{tmp_path / 'check'}")
    original = run_skopeo("inspect", "--config", f"oci:{tmp_path / 'seed'}:latest").stdout
    assert run_skopeo("inspect", "--config", f"oci:{layout}:saved").stdout == original


def test_two_tags_share_one_layout(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    build_oci_layout(first, [SHARED, {"only": b"first"}])
    build_oci_layout(second, [SHARED, {"only": b"second"}])
    layout = tmp_path / "shared"
    run_occystrap("process", f"oci-layout://{first}", f"oci-layout://{layout}?tag=a")
    result = run_occystrap("process", f"oci-layout://{second}", f"oci-layout://{layout}?tag=b")
    assert "1 already there" in result.stderr  # the shared layer is stored once
    for tag, source in (("a", first), ("b", second)):
        expected = run_skopeo("inspect", "--raw", f"oci:{source}:latest").stdout
        assert run_skopeo("inspect", "--raw", f"oci:{layout}:{tag}").stdout == expected
    # Writing a tag again replaces its entry; other tags stay.
    run_occystrap("process", f"oci-layout://{second}", f"oci-layout://{layout}?tag=a")
    index = json.loads((layout / "index.json").read_text())
    names = [entry["annotations"][REF_NAME] for entry in index["manifests"]]
    assert sorted(names) == ["a", "b"]
    assert len({entry["digest"] for entry in index["manifests"]}) == 1
    listed = run_occystrap(
        "process", f"oci-layout://{layout}", f"tar://{tmp_path / 'x.tar'}", check=False
    )
    assert_one_line_error(listed, "holds 2 images", "?tag=TAG", "a", "b")


def test_concurrent_writers_keep_every_tag(tmp_path):
    source = tmp_path / "source"
    build_oci_layout(source, [SHARED])
    layout = tmp_path / "shared"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    tags = [f"t{number}" for number in range(4)]
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "occystrap",
                "process",
                f"oci-layout://{source}",
                f"oci-layout://{layout}?tag={tag}",
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for tag in tags
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    for tag in tags:
        run_skopeo("inspect", "--raw", f"oci:{layout}:{tag}")
    assert not [path for path in layout.rglob("*") if ".partial-" in path.name]


def _hostile(tmp_path: Path) -> Path:
    layout = tmp_path / "hostile"
    build_oci_layout(layout, [{"a": b"b"}], ref_name="v1")
    return layout


def _index(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_text())


def _set_manifest_digest(layout: Path, digest: str) -> None:
    index = _index(layout)
    index["manifests"][0]["digest"] = digest
    (layout / "index.json").write_text(json.dumps(index))


def _manifest_blob(layout: Path) -> Path:
    return layout / "blobs" / "sha256" / _index(layout)["manifests"][0]["digest"][7:]


def _first_layer_blob(layout: Path) -> Path:
    manifest = json.loads(_manifest_blob(layout).read_text())
    return layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]


def _index_as_list(layout: Path) -> None:
    (layout / "index.json").write_text(json.dumps(_index(layout)["manifests"]))


def _index_not_json(layout: Path) -> None:
    (layout / "index.json").write_bytes(b"\xff{not json")


def _short_digest(layout: Path) -> None:
    _set_manifest_digest(layout, "sha256:abc")


def _digest_escaping(layout: Path) -> None:
    _set_manifest_digest(layout, "sha256:../../../../etc/passwd")


def _blob_symlinked_outside(layout: Path) -> None:
    blob = _manifest_blob(layout)
    outside = layout.parent / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)


def _blobs_directory_symlinked_outside(layout: Path) -> None:
    blobs = layout / "blobs"
    os.rename(blobs, layout.parent / "elsewhere")
    blobs.symlink_to(layout.parent / "elsewhere")


def _manifest_tampered(layout: Path) -> None:
    blob = _manifest_blob(layout)
    blob.write_bytes(blob.read_bytes().replace(b'"schemaVersion"', b'"schemaVersion" '))


def _layer_tampered(layout: Path) -> None:
    blob = _first_layer_blob(layout)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))


def _layer_missing(layout: Path) -> None:
    _first_layer_blob(layout).unlink()


def _marker_missing(layout: Path) -> None:
    (layout / "oci-layout").unlink()


def _marker_wrong_version(layout: Path) -> None:
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')


HOSTILE = {
    "index-list": (_index_as_list, "index.json is not a valid image index"),
    "index-not-json": (_index_not_json, "not valid JSON"),
    "short-digest": (_short_digest, "is not a sha256 or sha512 digest"),
    "digest-escaping": (_digest_escaping, "is not a digest"),
    "blob-symlink": (_blob_symlinked_outside, "points outside the directory"),
    "blobs-dir-symlink": (_blobs_directory_symlinked_outside, "points outside the directory"),
    "manifest-tampered": (_manifest_tampered, "manifest"),
    "layer-tampered": (_layer_tampered, "hashes to"),
    "layer-missing": (_layer_missing, "is missing from the layout"),
    "marker-missing": (_marker_missing, "is not an OCI image layout"),
    "marker-version": (_marker_wrong_version, "layout version 1.x"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layouts_give_one_line_errors(tmp_path, case):
    damage, fragment = HOSTILE[case]
    layout = _hostile(tmp_path)
    damage(layout)
    output = tmp_path / "out.tar"
    result = run_occystrap("process", f"oci-layout://{layout}", f"tar://{output}", check=False)
    assert_one_line_error(result, fragment)
    assert not output.exists()


def test_wrong_tag_lists_the_tags_and_bad_destinations_are_refused(tmp_path):
    layout = _hostile(tmp_path)
    missing = run_occystrap(
        "process", f"oci-layout://{layout}?tag=nope", f"tar://{tmp_path / 'x.tar'}", check=False
    )
    assert_one_line_error(missing, "no image tagged 'nope'", "it has: v1")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep me")
    refused = run_occystrap(
        "process", f"oci-layout://{layout}", f"oci-layout://{occupied}", check=False
    )
    assert_one_line_error(refused, "not an OCI image layout", "choose a new or empty directory")
    assert sorted(path.name for path in occupied.iterdir()) == ["precious.txt"]
    damaged = tmp_path / "damaged"
    build_oci_layout(damaged, [{"a": b"c"}])
    (damaged / "index.json").write_text("[]")
    refused = run_occystrap(
        "process", f"oci-layout://{layout}", f"oci-layout://{damaged}", check=False
    )
    assert_one_line_error(refused, "index.json is not a valid image index")
    assert (damaged / "index.json").read_text() == "[]"


# -- oci-archive://: a layout packed as one tarball, as skopeo's oci-archive: writes it ------


def test_registry_to_oci_archive_keeps_the_manifest_and_skopeo_reads_it(
    registry_plain, unique_repo, tmp_path
):
    """A Docker manifest goes into the archive byte for byte under its tag; skopeo inspects
    it and copies every blob out (verifying each); an index keeps its bytes too."""
    source = _seed(registry_plain, unique_repo, tmp_path)
    archive = tmp_path / "image.oci.tar"
    result = run_occystrap(
        *registry_flags(registry_plain), "process", source, f"oci-archive://{archive}?tag=v1"
    )
    original = _raw_manifest(registry_plain, f"{unique_repo}:v1")
    assert _digest_in(result.stderr) == _sha256(original)
    assert run_skopeo("inspect", "--raw", f"oci-archive:{archive}").stdout == original
    inspected = json.loads(run_skopeo("inspect", f"oci-archive:{archive}").stdout)
    assert inspected["Digest"] == _sha256(original)
    run_skopeo("copy", "--quiet", f"oci-archive:{archive}", f"dir:{tmp_path / 'check'}")
    assert os.listdir(tmp_path).count("image.oci.tar") == 1  # no partial file beside it

    refused = run_occystrap(
        *registry_flags(registry_plain), "process", source, f"oci-archive://{archive}", check=False
    )
    assert_one_line_error(refused, str(archive))
    assert run_skopeo("inspect", "--raw", f"oci-archive:{archive}").stdout == original

    multi = tmp_path / "multi"
    build_multiarch_layout(multi, PLATFORMS)
    push_multiarch_with_skopeo(multi, registry_plain, f"{unique_repo}-multi", "v1")
    index_archive = tmp_path / "index.oci.tar"
    run_occystrap(
        *registry_flags(registry_plain),
        "process",
        f"registry://{registry_plain.host}/{unique_repo}-multi:v1",
        f"oci-archive://{index_archive}",
    )
    index = _raw_manifest(registry_plain, f"{unique_repo}-multi:v1")
    stored = run_skopeo("inspect", "--raw", f"oci-archive:{index_archive}:v1").stdout
    assert stored == index
