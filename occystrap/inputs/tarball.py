"""Read `docker save` tarballs: the classic layout and the OCI layout newer Docker writes.

Each layer is streamed out of the archive into the work directory and verified:
its blob digest when the archive names one, its uncompressed digest always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from occystrap import compression
from occystrap.atomic import CHUNK_SIZE
from occystrap.errors import DigestMismatchError, OccystrapError, UsageError
from occystrap.pipeline import Image, Layer, ProgressSink
from occystrap.registry.hosts import DOCKER_HUB_HOST
from occystrap.registry.reference import parse_reference

log = logging.getLogger(__name__)

DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_METADATA_LIMIT = 16 * 1024 * 1024  # manifests, indexes and configs are small
_MAX_INDEX_DOCUMENTS = 64


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _member_key(name: str) -> str:
    return posixpath.normpath(name).lstrip("/")


def _named_digest(member_name: str) -> str | None:
    """The digest an OCI-layout path like `blobs/sha256/<hex>` asserts for its content."""
    match = _BLOB_NAME.fullmatch(_member_key(member_name))
    return f"sha256:{match.group(1)}" if match else None


def name_and_tag(repo_tag: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, registry-or-None-for-Docker-Hub) from a docker RepoTag."""
    first, slash, _ = repo_tag.partition("/")
    host_like = slash and ("." in first or ":" in first or first == "localhost")
    reference = parse_reference(repo_tag if host_like else f"docker.io/{repo_tag}")
    registry = None if reference.registry == DOCKER_HUB_HOST else reference.registry
    return reference.repository, reference.tag, registry


@dataclass
class _Archive:
    """The open tarball with its regular files indexed by normalised name."""

    path: Path
    tar: tarfile.TarFile
    members: dict[str, tarfile.TarInfo]

    def member(self, name: str, what: str) -> tarfile.TarInfo:
        member = self.members.get(_member_key(name)) if isinstance(name, str) else None
        if member is None:
            raise OccystrapError(
                f"{self.path}: {what} {name!r} is missing from the archive; the tarball is "
                "incomplete or not a docker save archive"
            )
        return member

    def read_small(self, name: str, what: str) -> bytes:
        member = self.member(name, what)
        if member.size > _METADATA_LIMIT:
            raise OccystrapError(f"{self.path}: {what} {name!r} is implausibly large")
        data = self.tar.extractfile(member).read()
        named = _named_digest(name)
        if named and _sha256(data) != named:
            raise DigestMismatchError(
                f"{self.path}: {what} {name!r} hashes to {_sha256(data)}; the tarball is corrupt"
            )
        return data

    def read_json(self, name: str, what: str):
        try:
            return json.loads(self.read_small(name, what))
        except ValueError as error:
            raise OccystrapError(f"{self.path}: {what} {name!r} is not JSON ({error})") from None


class TarballInput:
    """Reads the first image of a `docker save` tarball at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def fetch(self, workdir: Path, progress: ProgressSink) -> Image:
        try:
            tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 (closed in the finally below)
        except (OSError, tarfile.TarError, EOFError) as error:
            raise OccystrapError(
                f"cannot read {self.path} as a tarball ({error}); check the path and that it "
                "is a docker save archive"
            ) from None
        try:
            members = {_member_key(m.name): m for m in tar.getmembers() if m.isfile()}
            return self._read_image(_Archive(self.path, tar, members), workdir, progress)
        except (tarfile.TarError, EOFError) as error:
            raise OccystrapError(
                f"{self.path} is truncated or corrupt ({error}); save the image again"
            ) from None
        finally:
            tar.close()

    def _read_image(self, archive: _Archive, workdir: Path, progress: ProgressSink) -> Image:
        entries = archive.read_json("manifest.json", "manifest")
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            raise OccystrapError(f"{self.path}: manifest.json lists no images")
        entry = entries[0]
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        config = archive.read_small(config_name, "config")
        config_digest = _sha256(config)
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise OccystrapError(f"{self.path}: config {config_name!r} has no diff_ids") from None
        if not isinstance(layer_names, list) or len(layer_names) != len(diff_ids):
            raise OccystrapError(
                f"{self.path}: manifest.json lists {len(layer_names or [])} layers but the "
                f"config has {len(diff_ids)}; the tarball is inconsistent"
            )
        oci_manifest = self._oci_manifest(archive, config_digest, len(layer_names))
        descriptors = oci_manifest[1]["layers"] if oci_manifest else [None] * len(layer_names)

        layers: list[Layer] = []
        fetched: dict[str, Layer] = {}
        for name, diff_id, descriptor in zip(layer_names, diff_ids, descriptors, strict=True):
            key = _member_key(name) if isinstance(name, str) else name
            if key not in fetched:
                fetched[key] = self._fetch_layer(
                    archive, name, diff_id, descriptor, workdir, progress
                )
            layers.append(fetched[key])

        repo_tags = entry.get("RepoTags") or []
        name, tag, registry = "image", None, None
        if repo_tags:
            try:
                name, tag, registry = name_and_tag(repo_tags[0])
            except UsageError:
                log.warning("Ignoring unparseable RepoTag %r in %s", repo_tags[0], self.path)
        manifest_bytes = oci_manifest[0] if oci_manifest else None
        if oci_manifest:
            manifest_type = oci_manifest[1].get("mediaType", OCI_MANIFEST_TYPE)
        elif any(layer.compression == compression.ZSTD for layer in layers):
            manifest_type = OCI_MANIFEST_TYPE
        else:
            manifest_type = DOCKER_MANIFEST_TYPE
        return Image(
            name=name,
            tag=tag,
            config=config,
            config_digest=config_digest,
            layers=layers,
            manifest_media_type=manifest_type,
            manifest=manifest_bytes,
            extra={"registry": registry} if registry else {},
        )

    def _oci_manifest(
        self, archive: _Archive, config_digest: str, layer_count: int
    ) -> tuple[bytes, dict] | None:
        """The OCI manifest (bytes, parsed) for this config, when the archive has an index."""
        if "index.json" not in archive.members:
            return None
        pending = list(archive.read_json("index.json", "index").get("manifests") or [])
        for _ in range(_MAX_INDEX_DOCUMENTS):
            if not pending:
                break
            descriptor = pending.pop(0)
            digest = descriptor.get("digest", "") if isinstance(descriptor, dict) else ""
            blob_name = f"blobs/{digest.replace(':', '/', 1)}"
            if not digest.startswith("sha256:") or _member_key(blob_name) not in archive.members:
                continue  # other platforms may be left out of the archive
            data = archive.read_small(blob_name, "manifest")
            document = json.loads(data)
            if isinstance(document.get("manifests"), list):
                pending.extend(document["manifests"])
            elif (document.get("config") or {}).get("digest") == config_digest and len(
                document.get("layers") or []
            ) == layer_count:
                return data, document
        return None

    def _fetch_layer(
        self,
        archive: _Archive,
        name: str,
        diff_id: str,
        descriptor: dict | None,
        workdir: Path,
        progress: ProgressSink,
    ) -> Layer:
        member = archive.member(name, "layer")
        expected_digest = descriptor["digest"] if descriptor else _named_digest(name)
        destination = workdir / f"tarball-layer-{_member_key(name).replace('/', '_')}"
        label = diff_id.partition(":")[2][:12]
        progress.start(diff_id, member.size, label)
        blob_hasher = hashlib.sha256()
        source = archive.tar.extractfile(member)
        with open(destination, "wb") as output:
            while chunk := source.read(CHUNK_SIZE):
                output.write(chunk)
                blob_hasher.update(chunk)
                progress.advance(diff_id, len(chunk))
        progress.finish(diff_id)
        digest = f"sha256:{blob_hasher.hexdigest()}"
        if expected_digest and digest != expected_digest:
            raise DigestMismatchError(
                f"{self.path}: layer {name!r} hashes to {digest} but the archive names it "
                f"{expected_digest}; the tarball is corrupt"
            )
        with open(destination, "rb") as handle:
            kind = compression.detect(handle.read(4))
        if kind == compression.NONE:
            uncompressed_digest, uncompressed_size = digest, member.size
        else:
            uncompressed_digest, uncompressed_size = _hash_uncompressed(destination, kind)
        if uncompressed_digest != diff_id:
            raise DigestMismatchError(
                f"{self.path}: layer {name!r} unpacks to {uncompressed_digest} but the config "
                f"says {diff_id}; the tarball is corrupt"
            )
        if descriptor and descriptor.get("mediaType"):
            media_type = descriptor["mediaType"]
        else:
            media_type = compression.media_type_for(kind, oci=kind == compression.ZSTD)
        return Layer(
            digest=digest,
            size=member.size,
            media_type=media_type,
            diff_id=diff_id,
            path=destination,
            uncompressed_size=uncompressed_size,
        )


def _hash_uncompressed(path: Path, kind: str) -> tuple[str, int]:
    """(sha256 digest, size) of the decompressed content of the blob at `path`."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as raw, compression.decompressing_reader(raw, kind) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
            size += len(chunk)
    return f"sha256:{hasher.hexdigest()}", size
