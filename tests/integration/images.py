"""Build test images locally (no downloads) and move them with skopeo, an independent client.

Layouts are deterministic: the same layers give the same digests, so tests can compare what
occystrap wrote with what skopeo reads back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import zstandard

from tests.integration.servers import SKOPEO_BINARY, require_binary

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
REF_NAME = "org.opencontainers.image.ref.name"
SKOPEO_TIMEOUT_SECONDS = 120


class _HashingWriter(io.RawIOBase):
    """Forward writes while hashing and counting them, so blobs are never buffered whole."""

    def __init__(self, target) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class _Layout:
    """Writes content-addressed blobs into an OCI layout directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.blobs = self.path / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def add_bytes(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def add_json(self, document: dict, media_type: str) -> dict:
        return self.add_bytes(json.dumps(document, sort_keys=True).encode(), media_type)

    def add_layer(self, files: Mapping[str, bytes], compression: str) -> tuple[dict, str]:
        """Write one layer blob; return its descriptor and the diff_id (digest of the tar)."""
        if compression not in LAYER_MEDIA_TYPES:
            raise ValueError(f"unknown compression {compression!r}")
        scratch = self.blobs / "layer.partial"
        with open(scratch, "wb") as raw:
            compressed = _HashingWriter(raw)
            with _compressor(compressed, compression) as stream:
                tar_stream = _HashingWriter(stream)
                _write_tar(tar_stream, files)
        digest = compressed.sha256.hexdigest()
        os.replace(scratch, self.blobs / digest)
        descriptor = {
            "mediaType": LAYER_MEDIA_TYPES[compression],
            "digest": f"sha256:{digest}",
            "size": compressed.size,
        }
        return descriptor, f"sha256:{tar_stream.sha256.hexdigest()}"

    def write_index(self, manifests: list[dict]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.path / "index.json").write_text(json.dumps(index, indent=2))


def _compressor(target, compression: str):
    if compression == "gzip":
        # mtime=0 and no file name keep the gzip header, and so the digest, reproducible.
        return gzip.GzipFile(filename="", mode="wb", fileobj=target, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).stream_writer(target, closefd=False)
    return _HashingWriter(target)


def _write_tar(target, files: Mapping[str, bytes | tarfile.TarInfo]) -> None:
    """Regular files from bytes; a `TarInfo` value is added as it is (a device, a setuid
    file with no content, a link), under its key's name."""
    with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            if isinstance(content, tarfile.TarInfo):
                content.name = name
                tar.addfile(content)
                continue
            info = tarfile.TarInfo(name=name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))


def random_layer(size: int, seed: int, name: str = "random.bin") -> dict[str, bytes]:
    """One file of `size` incompressible bytes, the same for the same seed."""
    return {name: random.Random(seed).randbytes(size)}


def _image_manifest(
    layout: _Layout,
    layers: list[Mapping[str, bytes]],
    compression: str,
    config_overrides: Mapping | None,
    platform: tuple[str, str],
) -> dict:
    """Write layers, config and manifest blobs; return the manifest's descriptor."""
    layer_descriptors, diff_ids = [], []
    for files in layers:
        descriptor, diff_id = layout.add_layer(files, compression)
        layer_descriptors.append(descriptor)
        diff_ids.append(diff_id)
    operating_system, architecture = platform
    config = {
        "architecture": architecture,
        "os": operating_system,
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.occystrap.test": "true"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"test layer {i}"}
            for i in range(len(layers))
        ],
    }
    if config_overrides:
        config.update(config_overrides)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.add_json(config, OCI_CONFIG),
        "layers": layer_descriptors,
    }
    descriptor = layout.add_json(manifest, OCI_MANIFEST)
    descriptor["platform"] = {"os": operating_system, "architecture": architecture}
    return descriptor


def build_oci_layout(
    path: Path,
    layers: list[Mapping[str, bytes]],
    compression: str = "gzip",
    config_overrides: Mapping | None = None,
    platform: tuple[str, str] = ("linux", "amd64"),
    ref_name: str = "latest",
) -> dict:
    """Write a single-image OCI layout at `path`; return its manifest descriptor."""
    layout = _Layout(path)
    descriptor = _image_manifest(layout, layers, compression, config_overrides, platform)
    layout.write_index([{**descriptor, "annotations": {REF_NAME: ref_name}}])
    return descriptor


def build_multiarch_layout(
    path: Path,
    platforms: Mapping[tuple[str, str], list[Mapping[str, bytes]]],
    compression: str = "gzip",
    ref_name: str = "latest",
) -> dict:
    """Write an OCI layout whose `ref_name` is an image index over one image per platform.

    The index is nested (index.json -> index blob -> manifests) because skopeo copies a
    multi-arch image from an OCI layout only when the reference names an index.
    """
    layout = _Layout(path)
    manifests = [
        _image_manifest(layout, layers, compression, None, platform)
        for platform, layers in platforms.items()
    ]
    inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    descriptor = layout.add_json(inner, OCI_INDEX)
    layout.write_index([{**descriptor, "annotations": {REF_NAME: ref_name}}])
    return descriptor


def run_skopeo(*args: str) -> subprocess.CompletedProcess:
    """Run skopeo, failing with its stderr (which says why) instead of a bare exit code."""
    command = [require_binary(SKOPEO_BINARY), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SKOPEO_TIMEOUT_SECONDS, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def push_with_skopeo(
    layout_path: Path, registry, repo: str, tag: str, manifest_format: str = "v2s2"
) -> None:
    """Copy the layout's only image to `registry` as REPO:TAG (`manifest_format` "v2s2"/"oci")."""
    run_skopeo(
        "copy",
        "--quiet",
        f"--format={manifest_format}",
        *registry.skopeo_dest_args(),
        f"oci:{layout_path}",
        f"docker://{registry.host}/{repo}:{tag}",
    )


def push_multiarch_with_skopeo(
    layout_path: Path,
    registry,
    repo: str,
    tag: str,
    ref_name: str = "latest",
    manifest_format: str | None = None,
) -> None:
    """Copy a layout from `build_multiarch_layout` with every platform plus the index/list."""
    format_flag = [f"--format={manifest_format}"] if manifest_format else []
    run_skopeo(
        "copy",
        "--quiet",
        "--multi-arch=all",
        *format_flag,
        *registry.skopeo_dest_args(),
        f"oci:{layout_path}:{ref_name}",
        f"docker://{registry.host}/{repo}:{tag}",
    )


def pull_with_skopeo(registry, ref: str, layout_path: Path, multi_arch: bool = False) -> None:
    """Copy REPO:TAG (or REPO@DIGEST) from `registry` into an OCI layout, to check our pushes."""
    arch_flag = ["--multi-arch=all"] if multi_arch else []
    run_skopeo(
        "copy",
        "--quiet",
        *arch_flag,
        *registry.skopeo_src_args(),
        f"docker://{registry.host}/{ref}",
        f"oci:{layout_path}:latest",
    )


def skopeo_inspect(registry, ref: str, raw: bool = False, config: bool = False) -> dict:
    """`skopeo inspect` of REPO:TAG or REPO@DIGEST on `registry`, parsed from JSON."""
    flags = [*(["--raw"] if raw else []), *(["--config"] if config else [])]
    result = run_skopeo(
        "inspect", *flags, *registry.skopeo_args(), f"docker://{registry.host}/{ref}"
    )
    return json.loads(result.stdout)


def docker_save_blob_bytes(saved: Path) -> int:
    """The bytes of the config and distinct layer tars of a docker-save tarball (or of the
    same tree unpacked in a directory), as its manifest.json names them."""
    if saved.is_dir():
        manifest = json.loads((saved / "manifest.json").read_text())[0]
        names = {manifest["Config"], *manifest["Layers"]}
        return sum((saved / name).stat().st_size for name in names)
    with tarfile.open(saved) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)[0]
        names = {manifest["Config"], *manifest["Layers"]}
        return sum(archive.getmember(name).size for name in names)


def layout_blob_files(layout: Path) -> set[str]:
    """The digests of every file under a layout directory's blobs/sha256/, read straight
    from the directory."""
    return {f"sha256:{path.name}" for path in (layout / "blobs" / "sha256").iterdir()}


def layout_index_tags(layout: Path) -> dict[str, str]:
    """ref.name -> digest of every entry of a layout directory's index.json."""
    index = json.loads((layout / "index.json").read_text())
    return {entry["annotations"][REF_NAME]: entry["digest"] for entry in index["manifests"]}


def layout_image_blobs(layout: Path, digest: str) -> set[str]:
    """An image manifest's digest with its config's and layers', each blob read from the
    layout directory and hashed."""
    blobs = {digest}
    manifest = json.loads(layout_blob(layout, digest))
    for descriptor in [manifest["config"], *manifest["layers"]]:
        layout_blob(layout, descriptor["digest"])
        blobs.add(descriptor["digest"])
    return blobs


def layout_blob(layout: Path, digest: str) -> bytes:
    """A blob of an OCI layout directory, checked against its digest."""
    algorithm, _, encoded = digest.partition(":")
    data = (layout / "blobs" / algorithm / encoded).read_bytes()
    assert hashlib.new(algorithm, data).hexdigest() == encoded
    return data


def layout_reachable_blobs(layout: Path) -> set[str]:
    """Every digest the layout's index.json entries reach (indexes, manifests, configs,
    layers; a referrer's subject is not followed), read from the directory by this test."""
    index = json.loads((layout / "index.json").read_text())
    pending, reached = list(index["manifests"]), set()
    while pending:
        descriptor = pending.pop()
        reached.add(descriptor["digest"])
        document = json.loads(layout_blob(layout, descriptor["digest"]))
        pending += document.get("manifests", [])
        reached |= {
            blob["digest"] for blob in [document.get("config"), *document.get("layers", [])] if blob
        }
    return reached


def skopeo_copy_out_of_layout(layout: Path, tag: str, out: Path) -> str:
    """Copy TAG out of an OCI layout directory with skopeo (every blob read and verified);
    return the digest skopeo then reads from the copy."""
    run_skopeo("copy", "--quiet", f"oci:{layout}:{tag}", f"oci:{out}:{tag}")
    return json.loads(run_skopeo("inspect", f"oci:{out}:{tag}").stdout)["Digest"]
