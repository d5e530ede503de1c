"""Compression settings on the command line, and skopeo reading the gzip occystrap writes."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
import zstandard

from tests.integration.cli import assert_one_line_error, registry_flags, run_occystrap
from tests.integration.images import (
    build_oci_layout,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--compression-level", "4"], {}, "out of range for gzip"),
        (["--compression", "zstd", "--compression-level", "0"], {}, "zstd: use 1 to 22"),
        (["--compression", "zstd"], {"OCCYSTRAP_COMPRESSION_LEVEL": "23"}, "out of range"),
    ],
)
def test_compression_level_out_of_range_is_a_one_line_error(args, env, fragment, tmp_path):
    result = run_occystrap(
        *args,
        "process",
        f"tar://{tmp_path}/in.tar",
        f"tar://{tmp_path}/out.tar",
        env=env,
        check=False,
    )
    assert_one_line_error(result, fragment)


def test_gzip_layers_occystrap_writes_are_read_by_skopeo(registry_plain, unique_repo, tmp_path):
    """A layer of several gzip blocks, pushed from a tarball, inflates in skopeo to the
    exact tar the config's diff_id names."""
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(3_500_000, 11), {"etc/motd": b"hello\n"}])
    push_with_skopeo(layout, registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}"
    run_occystrap(*flags, "process", f"{source}:v1", f"tar://{tmp_path / 'image.tar'}")
    run_occystrap(*flags, "process", f"tar://{tmp_path / 'image.tar'}", f"{source}-gz:v1")
    raw = skopeo_inspect(registry_plain, f"{unique_repo}-gz:v1", raw=True)
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    archive = tmp_path / "skopeo.tar"
    run_skopeo(
        "copy",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}-gz:v1",
        f"docker-archive:{archive}",
    )
    config = skopeo_inspect(registry_plain, f"{unique_repo}-gz:v1", config=True)
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
        layer_digests = [
            "sha256:" + hashlib.sha256(tar.extractfile(name).read()).hexdigest()
            for name in entry["Layers"]
        ]
    assert layer_digests == config["rootfs"]["diff_ids"]


def test_random_bytes_go_stored_deterministically_and_skopeo_reads_them(
    registry_plain, unique_repo, tmp_path
):
    """A layer of random bytes (stored, not deflated) beside text (deflated): two pushes
    without the blob cache make the same digest, and skopeo inflates the layer to the tar
    the config's diff_id names."""
    random_size = 3 * 1024 * 1024
    layout = tmp_path / "layout"
    files = {
        **random_layer(random_size, 21, "model.bin"),
        "notes.txt": b"weights 0.125\n" * 150_000,
    }
    build_oci_layout(layout, [files])
    push_with_skopeo(layout, registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}"
    image = tmp_path / "image.tar"
    run_occystrap(*flags, "process", f"{source}:v1", f"tar://{image}")
    for name in ("a", "b"):
        run_occystrap(*flags, "--no-cache", "process", f"tar://{image}", f"{source}-{name}:v1")
    first, second = (
        skopeo_inspect(registry_plain, f"{unique_repo}-{name}:v1", raw=True)["layers"]
        for name in ("a", "b")
    )
    assert first == second
    (layer,) = first
    # the random megabytes at their own size (plus 5 bytes per 64 KiB), the text shrunk
    assert random_size < layer["size"] < random_size * 1.001 + 100_000
    archive = tmp_path / "skopeo.tar"
    run_skopeo(
        "copy",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}-b:v1",
        f"docker-archive:{archive}",
    )
    config = skopeo_inspect(registry_plain, f"{unique_repo}-b:v1", config=True)
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
        (name,) = entry["Layers"]
        layer_tar = tar.extractfile(name).read()
    assert ["sha256:" + hashlib.sha256(layer_tar).hexdigest()] == config["rootfs"]["diff_ids"]


def test_dest_compress_recompresses_a_copy_and_keep_keeps_it(registry_plain, unique_repo, tmp_path):
    """gzip -> zstd: the same diff_ids, new layer digests and an OCI manifest, which skopeo
    reads back to the very tars; the default keeps every blob and the manifest digest."""
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(2_500_000, 5), {"etc/motd": b"hello\n"}])
    push_with_skopeo(layout, registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    original = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    original_config = skopeo_inspect(registry_plain, f"{unique_repo}:v1", config=True)

    result = run_occystrap(
        *flags,
        "--dest-compress",
        "zstd",
        "process",
        source,
        f"registry://{registry_plain.host}/{unique_repo}-zstd:v1",
    )
    assert "2 recompressed (new layer digests and manifest)" in result.stderr
    raw = skopeo_inspect(registry_plain, f"{unique_repo}-zstd:v1", raw=True)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    assert not {layer["digest"] for layer in raw["layers"]} & {
        layer["digest"] for layer in original["layers"]
    }
    config = skopeo_inspect(registry_plain, f"{unique_repo}-zstd:v1", config=True)
    assert config["rootfs"]["diff_ids"] == original_config["rootfs"]["diff_ids"]
    copied = tmp_path / "skopeo-layout"  # skopeo checks every blob digest as it copies
    run_skopeo(
        "copy",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}-zstd:v1",
        f"oci:{copied}:v1",
    )
    inflated = []
    for layer in raw["layers"]:
        blob = copied / "blobs" / "sha256" / layer["digest"].partition(":")[2]
        tar = zstandard.ZstdDecompressor().stream_reader(blob.open("rb")).read()
        inflated.append("sha256:" + hashlib.sha256(tar).hexdigest())
    assert inflated == config["rootfs"]["diff_ids"]

    kept = run_occystrap(
        *flags,
        "--dest-compress-keep",
        "process",
        source,
        f"registry://{registry_plain.host}/{unique_repo}-kept:v1",
    )
    assert "recompressed" not in kept.stderr
    assert skopeo_inspect(registry_plain, f"{unique_repo}-kept:v1", raw=True) == original


def test_dest_compress_needs_a_registry_destination(registry_plain, unique_repo, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [{"etc/motd": b"hello\n"}])
    push_with_skopeo(layout, registry_plain, unique_repo, "v1")
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    result = run_occystrap(
        *registry_flags(registry_plain),
        "--dest-compress",
        "zstd",
        "process",
        source,
        f"tar://{tmp_path / 'out.tar'}",
        check=False,
    )
    assert_one_line_error(result, "--dest-compress recompresses layers")
    assert not (tmp_path / "out.tar").exists()
