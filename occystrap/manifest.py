"""Image manifests and indexes (Docker schema 2 and OCI): parse, pick a platform, build."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from occystrap import compression, mediatypes
from occystrap.errors import OccystrapError
from occystrap.jsondoc import MAX_DEPTH, TooDeepJSONError, parse_json
from occystrap.mediatypes import (
    ATTESTATION_TYPE,
    ATTESTATION_TYPE_ANNOTATION,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_INDEX,
    OCI_MANIFEST,
)
from occystrap.platforms import Platform

ARCHITECTURE_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}
DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}
PLATFORM_CHOICE_HINT = "choose one with --platform OS/ARCH[/VARIANT]"

_DIGEST_PATTERN = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class UnsupportedManifestError(OccystrapError):
    """The registry served a manifest format we do not handle (schema 1)."""


class MalformedManifestError(OccystrapError):
    """A manifest is not valid JSON or lacks a field the format requires; `what` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the manifest is malformed: {what}; the registry or image is broken, try another tag"
        )
        self.what = what


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob or manifest: what it is, its digest, its size."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    artifact_type: str | None = None  # what an artifact manifest is, as referrer lists say


@dataclass(frozen=True)
class PlatformDescriptor(Descriptor):
    """An index entry: a manifest descriptor and the platform it runs on (if stated)."""

    platform: Platform | None = None

    @property
    def is_attestation(self) -> bool:
        """Build attestations (provenance, SBOM) sit in indexes but are not runnable images."""
        if self.annotations.get(ATTESTATION_TYPE_ANNOTATION) == ATTESTATION_TYPE:
            return True
        return self.platform is not None and (
            self.platform.os == "unknown" and self.platform.architecture == "unknown"
        )


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    raw: bytes
    artifact_type: str | None = None
    subject: Descriptor | None = None  # the manifest this one refers to (a signature's image)
    annotations: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ManifestIndex:
    media_type: str
    manifests: list[PlatformDescriptor]
    raw: bytes
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False)


def _field(document: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = document.get(key)
    if value is None:
        raise MalformedManifestError(f"{where}{key} is missing")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedManifestError(f"{where}{key} has the wrong type")
    return value


def _optional_field(document: dict, key: str, kind: type, where: str) -> Any:
    return None if document.get(key) is None else _field(document, key, kind, where)


def _strings(values: Any, where: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise MalformedManifestError(f"{where} is not a list of strings")
    return tuple(values)


def _string_map(values: Any, where: str) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise MalformedManifestError(f"{where} is not a map of strings")
    return dict(values)


def _descriptor_fields(document: Any, where: str) -> dict[str, Any]:
    if document is None:
        raise MalformedManifestError(f"{where.rstrip('.')} is missing")
    if not isinstance(document, dict):
        raise MalformedManifestError(f"{where.rstrip('.')} is not an object")
    digest = _field(document, "digest", str, where)
    if not _DIGEST_PATTERN.fullmatch(digest):
        raise MalformedManifestError(f"{where}digest {digest!r} is not a digest")
    size = _field(document, "size", int, where)
    if size < 0:
        raise MalformedManifestError(f"{where}size is negative")
    return {
        "media_type": _field(document, "mediaType", str, where),
        "digest": digest,
        "size": size,
        "urls": _strings(document.get("urls"), f"{where}urls"),
        "annotations": _string_map(document.get("annotations"), f"{where}annotations"),
        "artifact_type": _optional_field(document, "artifactType", str, where),
    }


def _referring_fields(document: dict) -> dict[str, Any]:
    """What OCI 1.1 adds to a manifest or index: its artifactType, subject and annotations."""
    subject = document.get("subject")
    if subject is not None:
        subject = Descriptor(**_descriptor_fields(subject, "subject."))
    return {
        "artifact_type": _optional_field(document, "artifactType", str, ""),
        "subject": subject,
        "annotations": _string_map(document.get("annotations"), "annotations"),
    }


def _platform(document: Any, where: str) -> Platform | None:
    if document is None:
        return None
    if not isinstance(document, dict):
        raise MalformedManifestError(f"{where}platform is not an object")
    inner = f"{where}platform."
    return Platform(
        os=_field(document, "os", str, inner),
        architecture=_field(document, "architecture", str, inner),
        variant=_optional_field(document, "variant", str, inner),
        os_version=_optional_field(document, "os.version", str, inner),
        os_features=_strings(document.get("os.features"), f"{inner}os.features"),
    )


def _media_type(document: dict, content_type: str | None) -> str:
    """The manifest's type: the Content-Type, else its mediaType field, else its shape."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    embedded = document.get("mediaType")
    known = mediatypes.MANIFEST_TYPES | mediatypes.SCHEMA1_TYPES
    if declared in known:
        media_type = declared
    elif isinstance(embedded, str) and embedded in known:
        media_type = embedded
    elif document.get("schemaVersion") == 1:
        media_type = DOCKER_SCHEMA1
    elif "manifests" in document:
        media_type = OCI_INDEX
    elif "config" in document or "layers" in document:
        media_type = OCI_MANIFEST
    else:
        raise MalformedManifestError("it is neither an image manifest nor an index")
    if media_type in mediatypes.SCHEMA1_TYPES or document.get("schemaVersion") == 1:
        raise UnsupportedManifestError(
            "schema 1 manifests are not supported; ask the registry for schema 2 or re-push "
            "the image"
        )
    return media_type


def parse_manifest(raw: bytes, content_type: str | None) -> Manifest | ManifestIndex:
    """Parse a manifest or index as served; any defect raises an `OccystrapError`."""
    try:
        document = parse_json(raw)
    except TooDeepJSONError:
        raise MalformedManifestError(f"it nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise MalformedManifestError("it is not valid JSON") from None
    if not isinstance(document, dict):
        raise MalformedManifestError("it is not a JSON object")
    media_type = _media_type(document, content_type)
    if mediatypes.is_index(media_type):
        entries = _field(document, "manifests", list, "")
        return ManifestIndex(
            media_type=media_type,
            manifests=[
                PlatformDescriptor(
                    **_descriptor_fields(entry, f"manifests[{position}]."),
                    platform=_platform(entry.get("platform"), f"manifests[{position}]."),
                )
                for position, entry in enumerate(entries)
            ],
            raw=raw,
            **_referring_fields(document),
        )
    layers = _field(document, "layers", list, "")
    return Manifest(
        media_type=media_type,
        config=Descriptor(**_descriptor_fields(document.get("config"), "config.")),
        layers=[
            Descriptor(**_descriptor_fields(layer, f"layers[{position}]."))
            for position, layer in enumerate(layers)
        ],
        raw=raw,
        **_referring_fields(document),
    )


def normalise_architecture(architecture: str) -> str:
    lowered = architecture.lower()
    return ARCHITECTURE_ALIASES.get(lowered, lowered)


def _effective_variant(architecture: str, variant: str | None) -> str | None:
    """arm64 without a variant means v8 (likewise arm means v7), so compare them as such."""
    return (variant.lower() if variant else None) or DEFAULT_VARIANTS.get(architecture)


class PlatformEntries(Protocol):
    """Anything listing platform manifests: a parsed index, or the pipeline's ImageIndex."""

    @property
    def manifests(self) -> Sequence[PlatformDescriptor]: ...


def select_platform(
    index: PlatformEntries, os: str | None, arch: str | None, variant: str | None
) -> PlatformDescriptor:
    """The index entry for the wanted platform (linux/amd64 unless told otherwise).

    Without a variant the architecture's default variant wins, then an entry with no variant,
    then any variant. Attestation entries never match.
    """
    wanted_os = (os or "linux").lower()
    wanted_arch = normalise_architecture(arch or "amd64")
    wanted_variant = _effective_variant(wanted_arch, variant)
    runnable = [
        (entry, entry.platform)
        for entry in index.manifests
        if entry.platform is not None and not entry.is_attestation
    ]
    candidates = [
        (entry, platform)
        for entry, platform in runnable
        if platform.os.lower() == wanted_os
        and normalise_architecture(platform.architecture) == wanted_arch
    ]
    exact = [
        entry
        for entry, platform in candidates
        if _effective_variant(wanted_arch, platform.variant) == wanted_variant
    ]
    if exact:
        return exact[0]
    if variant is None and candidates:
        unvariant = [entry for entry, platform in candidates if platform.variant is None]
        return (unvariant or [entry for entry, _ in candidates])[0]
    wanted = "/".join(part for part in (wanted_os, wanted_arch, variant) if part)
    available = ", ".join(str(platform) for _, platform in runnable) or "none"
    raise OccystrapError(f"no {wanted} image; available: {available}; {PLATFORM_CHOICE_HINT}")


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def image_info(manifest: Manifest, config: dict) -> dict:
    """The metadata `info` prints, from the manifest and its (already parsed) config blob."""
    runtime = _mapping(config.get("config"))
    diff_ids = _list(_mapping(config.get("rootfs")).get("diff_ids"))
    layer_history = [
        _mapping(entry)
        for entry in _list(config.get("history"))
        if not _mapping(entry).get("empty_layer")
    ]
    layers = []
    for position, layer in enumerate(manifest.layers):
        history = layer_history[position] if position < len(layer_history) else {}
        layers.append(
            {
                "digest": layer.digest,
                "size": layer.size,
                "media_type": layer.media_type,
                "compression": mediatypes.compression_of(layer.media_type),
                "diff_id": diff_ids[position] if position < len(diff_ids) else None,
                "created_by": history.get("created_by", ""),
            }
        )
    return {
        "media_type": manifest.media_type,
        "platform": {
            "os": config.get("os"),
            "architecture": config.get("architecture"),
            "variant": config.get("variant"),
        },
        "config_digest": manifest.config.digest,
        "layers": layers,
        "env": runtime.get("Env") or [],
        "entrypoint": runtime.get("Entrypoint"),
        "cmd": runtime.get("Cmd"),
        "labels": runtime.get("Labels") or {},
        "created": config.get("created"),
    }


def _relabel(media_type: str, oci: bool) -> str:
    """The same blob's media type in the target family (Docker or OCI), where one exists."""
    kind = mediatypes.lookup(media_type)
    if kind is not None and kind.is_config:
        return mediatypes.OCI_CONFIG if oci else mediatypes.DOCKER_CONFIG
    if kind is not None and kind.is_layer and kind.is_distributable:
        return compression.media_type_for(mediatypes.compression_of(media_type), oci)
    return media_type


def descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    """A descriptor as a manifest or index writes it; empty optional fields are left out."""
    document: dict[str, Any] = {
        "mediaType": descriptor.media_type,
        "digest": descriptor.digest,
        "size": descriptor.size,
    }
    if descriptor.urls:
        document["urls"] = list(descriptor.urls)
    if descriptor.artifact_type:
        document["artifactType"] = descriptor.artifact_type
    if descriptor.annotations:
        document["annotations"] = dict(descriptor.annotations)
    return document


def empty_index() -> dict[str, Any]:
    """An OCI image index listing nothing yet (index.json, a referrers tag index)."""
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _relabelled_json(descriptor: Descriptor, oci: bool) -> dict[str, Any]:
    return descriptor_json(replace(descriptor, media_type=_relabel(descriptor.media_type, oci)))


def build_manifest(config: Descriptor, layers: list[Descriptor], oci: bool) -> bytes:
    """A schema 2 image manifest as canonical JSON (sorted keys, compact), for pushing.

    Config and standard layer media types are relabelled into the chosen family; zstd layers
    cannot go in a Docker manifest and raise.
    """
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": _relabelled_json(config, oci),
        "layers": [_relabelled_json(layer, oci) for layer in layers],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
