"""Artifacts as oras makes them: files pushed as the blobs of an OCI 1.1 manifest (each named by
its `org.opencontainers.image.title`), and pulled back into a directory.

Pushing builds the manifest (empty config, `artifactType`, optional `subject` and
annotations) and writes it through a `occystrap.graph.Store`, so a registry or an OCI layout takes
it, with a referrers tag index where the store does not index subjects itself. Pulling
verifies every blob against its digest, refuses a title that would land outside the
directory or on a file already there, and moves the files into place only once all of them
are complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from occystrap.atomic import partial_sibling
from occystrap.digests import hash_of, new_hasher, sha256_digest
from occystrap.endpoints import Endpoint, parse_uri
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import FilesystemError, OccystrapError, UsageError
from occystrap.graph import Store
from occystrap.image import VerifyingReader
from occystrap.manifest import Descriptor, Manifest, descriptor_json, parse_manifest
from occystrap.mediatypes import OCI_EMPTY, OCI_EMPTY_DIGEST, OCI_MANIFEST
from occystrap.ocilayout import DEFAULT_TAG
from occystrap.registry.referrers import add_to_referrers_index
from occystrap.settings import RunSettings
from occystrap.stores import named_reference, open_source, open_store, reference_of

TITLE = "org.opencontainers.image.title"
DEFAULT_FILE_TYPE = "application/octet-stream"
EMPTY_CONFIG = b"{}"
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArtifactFile:
    """A file to push, and the media type its blob gets."""

    path: Path
    media_type: str = DEFAULT_FILE_TYPE


def parse_file_argument(text: str) -> ArtifactFile:
    """`PATH[:MEDIATYPE]`, as oras takes it; a suffix without a '/' is part of the path."""
    path, colon, media_type = text.rpartition(":")
    if colon and "/" in media_type and path:
        return ArtifactFile(Path(path), media_type)
    return ArtifactFile(Path(text))


def parse_annotation(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise UsageError(f"invalid annotation {text!r}: expected KEY=VALUE")
    return key, value


@dataclass(frozen=True)
class PushedArtifact:
    digest: str
    size: int
    files: int
    subject: str | None


@dataclass(frozen=True)
class PulledArtifact:
    digest: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0


def _file_descriptor(file: ArtifactFile) -> Descriptor:
    """The file's blob descriptor, its digest computed by streaming it."""
    try:
        if not file.path.is_file():
            raise UsageError(f"{file.path}: not a file; artifact push takes files")
        hasher, size = new_hasher("sha256:"), 0
        with open(file.path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise FilesystemError(f"{file.path}: {error.strerror or error}") from None
    return Descriptor(file.media_type, hash_of(hasher), size, annotations={TITLE: file.path.name})


def push_artifact(
    settings: RunSettings,
    destination: str,
    files: Sequence[ArtifactFile],
    artifact_type: str,
    subject: str | None = None,
    annotations: dict[str, str] | None = None,
) -> PushedArtifact:
    """Push `files` as one artifact to DESTINATION (registry://, oci-layout:// or a bucket), with
    `subject` (an image in the same repository) when given."""
    if not files:
        raise UsageError("artifact push needs at least one FILE")
    endpoint = parse_uri(destination)
    layers = [_file_descriptor(file) for file in files]
    titles = [layer.annotations[TITLE] for layer in layers]
    if len(set(titles)) != len(titles):
        raise UsageError(
            f"two files share a name ({', '.join(titles)}); pull could not tell them apart"
        )
    with open_store(settings, endpoint, "artifact push", writing=True) as store:
        subject_descriptor = None if subject is None else _subject(store, endpoint, subject)
        empty = Descriptor(OCI_EMPTY, OCI_EMPTY_DIGEST, len(EMPTY_CONFIG))
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor_json(empty),
            "layers": [descriptor_json(layer) for layer in layers],
        }
        if subject_descriptor is not None:
            document["subject"] = descriptor_json(subject_descriptor)
        if annotations:
            document["annotations"] = dict(annotations)
        if not store.has_blob(empty):
            store.put_blob(empty, lambda: io.BytesIO(EMPTY_CONFIG))
        for file, layer in zip(files, layers, strict=True):
            if not store.has_blob(layer):
                store.put_blob(layer, partial(_verified_file, file, layer))
        raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        digest = sha256_digest(raw)
        indexed = store.put_manifest(named_reference(endpoint) or DEFAULT_TAG, raw, OCI_MANIFEST)
        if subject_descriptor is not None and not indexed:
            manifest = Descriptor(
                OCI_MANIFEST,
                digest,
                len(raw),
                annotations=dict(annotations or {}),
                artifact_type=artifact_type,
            )
            add_to_referrers_index(store, subject_descriptor.digest, manifest)
    return PushedArtifact(
        digest,
        len(raw),
        len(files),
        None if subject_descriptor is None else subject_descriptor.digest,
    )


def _subject(store: Store, endpoint: Endpoint, subject: str) -> Descriptor:
    """The subject's descriptor; it must live where the artifact goes (its repository, or
    the same layout), as the referrers API and tag schema look only there."""
    if subject.startswith(("sha256:", "sha512:")) or "://" not in subject:
        reference = subject
    else:
        subject_uri = parse_uri(subject)
        same = (
            isinstance(subject_uri, RegistryURI)
            and isinstance(endpoint, RegistryURI)
            and (subject_uri.reference.registry, subject_uri.reference.repository)
            == (endpoint.reference.registry, endpoint.reference.repository)
        ) or (
            isinstance(subject_uri, OciLayoutURI)
            and isinstance(endpoint, OciLayoutURI)
            and subject_uri.path.resolve() == endpoint.path.resolve()
        )
        if not same:
            raise UsageError(
                f"--subject {subject} is not in {endpoint}'s repository; an artifact can only"
                " refer to a manifest beside it"
            )
        reference = reference_of(subject_uri)
    answer = store.manifest_at(reference)
    if answer is None:
        raise UsageError(f"--subject {subject}: no such manifest at {endpoint}")
    raw, media_type, digest = answer
    return Descriptor(media_type, digest, len(raw))


@contextmanager
def _verified_file(file: ArtifactFile, layer: Descriptor) -> Iterator[VerifyingReader]:
    """The file as pushed, checked against the digest computed first (it must not change)."""
    with open(file.path, "rb") as handle:
        reader = VerifyingReader(
            handle, layer.digest, layer.size, f"{file.path} (changed while pushed)"
        )
        yield reader
        reader.drain()


# -- pull ---------------------------------------------------------------------------------


def safe_title(title: str, directory: Path) -> Path:
    """Where a layer titled `title` goes under `directory`: a relative path of plain names.
    A title that is absolute, climbs out with '..', or has an empty or '.' part is refused."""
    parts = title.split("/")
    if "\0" in title or "\\" in title or any(part in ("", ".", "..") for part in parts):
        raise OccystrapError(
            f"artifact file title {title!r} would be written outside {directory} or onto it;"
            " refusing to pull it (the artifact is malformed or hostile)"
        )
    return directory.joinpath(*parts)


def pull_artifact(settings: RunSettings, source: str, directory: Path) -> PulledArtifact:
    """Write each titled blob of the artifact SOURCE names into `directory`, verified; nothing
    is written unless every blob is complete and every title is safe and free."""
    directory = Path(directory)
    with open_source(settings, parse_uri(source), "artifact pull") as opened:
        store = opened.store
        raw, media_type, digest = opened.root
        document = parse_manifest(raw, media_type)
        if not isinstance(document, Manifest):
            raise UsageError(
                f"{opened.endpoint} is an index, not an artifact manifest; name one of its"
                " manifests by digest"
            )
        titled = [layer for layer in document.layers if TITLE in layer.annotations]
        targets = _targets(titled, directory)
        created = not directory.exists()
        staged: list[tuple[Path, Path]] = []
        placed: list[Path] = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for layer, target in zip(titled, targets, strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                _check_inside(target, directory)
                temporary = partial_sibling(target)
                staged.append((temporary, target))
                _write_verified(store, layer, temporary, target.name)
            for temporary, target in staged:
                os.link(temporary, target)  # fails rather than replace a file that appeared
                placed.append(target)
                temporary.unlink()
        except BaseException:
            for path in [temporary for temporary, _ in staged] + placed:
                path.unlink(missing_ok=True)
            if created:
                shutil.rmtree(directory, ignore_errors=True)
            raise
    return PulledArtifact(digest, targets, sum(layer.size for layer in titled))


def _write_verified(store: Store, layer: Descriptor, path: Path, name: str) -> None:
    with store.blob(layer).open() as stored, open(path, "xb") as out:
        reader = VerifyingReader(stored, layer.digest, layer.size, f"{name} ({layer.digest})")
        while chunk := reader.read(_HASH_CHUNK):
            out.write(chunk)
        reader.drain()


def _targets(layers: Sequence[Descriptor], directory: Path) -> list[Path]:
    """Every layer's target, all checked before anything is written."""
    targets = [safe_title(layer.annotations[TITLE], directory) for layer in layers]
    if len(set(targets)) != len(targets):
        raise OccystrapError("the artifact names two files alike; refusing to pull it")
    for target in targets:
        if target.exists() or target.is_symlink():
            raise FilesystemError(
                f"{target} already exists; remove it or pull into another directory"
            )
    return targets


def _check_inside(target: Path, directory: Path) -> None:
    """A directory on the way that is a symlink must not lead outside `directory`."""
    if not target.parent.resolve().is_relative_to(directory.resolve()):
        raise OccystrapError(
            f"{target} lies outside {directory} through a symbolic link; refusing to write it"
        )
