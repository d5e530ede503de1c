"""The docker-save tarball input: classic and OCI layouts, verification, hostile archives."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from occystrap import compression
from occystrap.archive import name_and_tag
from occystrap.endpoints.tar import TarSource
from occystrap.errors import DigestMismatchError, OccystrapError
from occystrap.image import SourceName

from .image_builder import layer_tar, make_image, read_verified, save_tar, sha256

LAYERS = [{"etc/hosts": b"localhost\n"}, {"bin/sh": b"#!" + b"y" * 3000, "bin/ln": "sh"}]


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def config_for(diff_ids: list[str]) -> bytes:
    return json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def fetch(path: Path, tmp_path: Path):
    """Read the image and every layer to its end, as any output would, verifying it."""
    return read_verified(TarSource(path).read())


@pytest.mark.parametrize("kind", [compression.GZIP, compression.ZSTD, compression.NONE])
def test_round_trip_through_tarball_output(tmp_path, kind):
    image = make_image(tmp_path, LAYERS + [LAYERS[0]], kind=kind)
    save_tar(image, tmp_path / "out.tar")
    read = fetch(tmp_path / "out.tar", tmp_path)
    assert (read.source.repository, read.source.tag) == ("library/busybox", "latest")
    assert read.config == image.config and read.config_digest == image.config_digest
    assert [layer.diff_id for layer in read.layers] == [layer.diff_id for layer in image.layers]
    for layer in read.layers:
        assert layer.digest == layer.diff_id
        assert layer.media_type == "application/vnd.docker.image.rootfs.diff.tar"
        with layer.open_tar() as stream:
            data = stream.read()
        assert sha256(data) == layer.diff_id and len(data) == layer.uncompressed_size
    assert read.manifest is None


def test_classic_layout_with_gzip_layer(tmp_path):
    raw = layer_tar(LAYERS[0])
    blob = io.BytesIO()
    compression.compress_stream(io.BytesIO(raw), blob, compression.GZIP)
    config = config_for([sha256(raw)])
    manifest = [{"Config": "c.json", "RepoTags": ["r.io:5000/team/app:v2"], "Layers": ["l/x"]}]
    path = write_tar(
        tmp_path / "in.tar",
        {"manifest.json": json.dumps(manifest).encode(), "c.json": config, "l/x": blob.getvalue()},
    )
    image = fetch(path, tmp_path)
    assert image.source == SourceName("team/app", "v2", "r.io:5000")
    (layer,) = image.layers
    assert layer.digest == sha256(blob.getvalue()) and layer.size == len(blob.getvalue())
    assert layer.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    with layer.open_tar() as stream:
        assert stream.read() == raw


def oci_archive(tmp_path: Path, corrupt_blob: bool = False) -> tuple[Path, bytes, list]:
    raws = [layer_tar(files) for files in LAYERS]
    blobs = []
    for raw in raws:
        out = io.BytesIO()
        compression.compress_stream(io.BytesIO(raw), out, compression.GZIP)
        blobs.append(out.getvalue())
    config = config_for([sha256(raw) for raw in raws])
    oci_manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "x", "digest": sha256(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(blob),
                    "size": len(blob),
                }
                for blob in blobs
            ],
        }
    ).encode()
    index = {"schemaVersion": 2, "manifests": [{"digest": sha256(oci_manifest)}]}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index)}
    for data in [config, oci_manifest, *blobs]:
        files[f"blobs/sha256/{sha256(data)[7:]}"] = data
    if corrupt_blob:
        files[f"blobs/sha256/{sha256(blobs[1])[7:]}"] = blobs[0]
    manifest = [
        {
            "Config": f"blobs/sha256/{sha256(config)[7:]}",
            "RepoTags": ["busybox:1.36"],
            "Layers": [f"blobs/sha256/{sha256(blob)[7:]}" for blob in blobs],
        }
    ]
    files["manifest.json"] = json.dumps(manifest)
    path = write_tar(tmp_path / "oci.tar", {k: v if isinstance(v, bytes) else v.encode()
                                             for k, v in files.items()})  # fmt: skip
    return path, oci_manifest, blobs


def test_oci_layout_keeps_manifest_and_media_types(tmp_path):
    path, oci_manifest, blobs = oci_archive(tmp_path)
    image = fetch(path, tmp_path)
    assert (image.source.repository, image.source.tag) == ("library/busybox", "1.36")
    assert image.manifest == oci_manifest
    assert image.manifest_media_type == "application/vnd.oci.image.manifest.v1+json"
    assert [layer.digest for layer in image.layers] == [sha256(blob) for blob in blobs]
    assert {layer.media_type for layer in image.layers} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }


def test_oci_blob_that_does_not_match_its_digest_is_rejected(tmp_path):
    path, _, _ = oci_archive(tmp_path, corrupt_blob=True)
    with pytest.raises(DigestMismatchError, match="hashes to"):
        fetch(path, tmp_path)


def test_layer_not_matching_config_diff_id_is_rejected(tmp_path):
    raw = layer_tar(LAYERS[0])
    manifest = [{"Config": "c.json", "RepoTags": [], "Layers": ["l/layer.tar"]}]
    path = write_tar(
        tmp_path / "in.tar",
        {
            "manifest.json": json.dumps(manifest).encode(),
            "c.json": config_for([sha256(b"something else")]),
            "l/layer.tar": raw,
        },
    )
    with pytest.raises(DigestMismatchError, match="l/layer.tar"):
        fetch(path, tmp_path)


@pytest.mark.parametrize("layer_name", ["../../etc/passwd", "/etc/passwd", "missing/layer.tar"])
def test_manifest_naming_paths_outside_the_archive(tmp_path, layer_name):
    manifest = [{"Config": "c.json", "Layers": [layer_name]}]
    path = write_tar(
        tmp_path / "in.tar",
        {"manifest.json": json.dumps(manifest).encode(), "c.json": config_for(["sha256:00"])},
    )
    with pytest.raises(OccystrapError, match="missing from the archive"):
        fetch(path, tmp_path)


def test_untagged_image_is_named_image(tmp_path):
    image = make_image(tmp_path, LAYERS[:1], tag=None)
    save_tar(image, tmp_path / "out.tar")
    read = fetch(tmp_path / "out.tar", tmp_path)
    assert (read.source.repository, read.source.tag) == ("image", None)


def test_missing_and_corrupt_tarballs_are_one_line_errors(tmp_path):
    with pytest.raises(OccystrapError, match="cannot read"):
        fetch(tmp_path / "nope.tar", tmp_path)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(OccystrapError):
        fetch(tmp_path / "junk.tar", tmp_path)
    image = make_image(tmp_path, LAYERS)
    save_tar(image, tmp_path / "out.tar")
    data = (tmp_path / "out.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) - 3000])
    with pytest.raises(OccystrapError) as caught:
        fetch(tmp_path / "cut.tar", tmp_path)
    assert "\n" not in str(caught.value)
    write_tar(tmp_path / "nomanifest.tar", {"x": b"y"})
    with pytest.raises(OccystrapError, match="manifest"):
        fetch(tmp_path / "nomanifest.tar", tmp_path)


def test_name_and_tag():
    assert name_and_tag("busybox:latest") == SourceName("library/busybox", "latest", None)
    assert name_and_tag("team/app:1") == SourceName("team/app", "1", None)
    assert name_and_tag("localhost:5000/a:b") == SourceName("a", "b", "localhost:5000")
    assert name_and_tag("quay.io/org/app:x") == SourceName("org/app", "x", "quay.io")


SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")


def skopeo(*args: str) -> str:
    result = subprocess.run(
        [SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.integration
@needs_skopeo
def test_skopeo_reads_our_tarball(tmp_path):
    image = make_image(tmp_path, LAYERS + [LAYERS[0]], kind=compression.GZIP)
    save_tar(image, tmp_path / "out.tar")
    inspected = json.loads(skopeo("inspect", f"docker-archive:{tmp_path / 'out.tar'}"))
    assert inspected["Layers"] == [layer.diff_id for layer in image.layers]
    raw = json.loads(skopeo("inspect", "--config", f"docker-archive:{tmp_path / 'out.tar'}"))
    assert raw["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    skopeo("copy", f"docker-archive:{tmp_path / 'out.tar'}", f"oci:{tmp_path / 'oci'}:x")
    assert (tmp_path / "oci" / "index.json").exists()


@pytest.mark.integration
@needs_skopeo
def test_we_read_a_tarball_skopeo_wrote(tmp_path):
    image = make_image(tmp_path, LAYERS, kind=compression.GZIP)
    save_tar(image, tmp_path / "ours.tar")
    skopeo("copy", f"docker-archive:{tmp_path / 'ours.tar'}", f"oci:{tmp_path / 'layout'}:t")
    skopeo(
        "copy", f"oci:{tmp_path / 'layout'}:t", f"docker-archive:{tmp_path / 'theirs.tar'}:a/b:c"
    )
    read = fetch(tmp_path / "theirs.tar", tmp_path)
    assert (read.source.repository, read.source.tag) == ("a/b", "c")
    assert [layer.diff_id for layer in read.layers] == [layer.diff_id for layer in image.layers]
