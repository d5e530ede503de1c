"""Every media type occystrap knows, in one table, with what each one is.

Code asks the table (`is_index`, `is_image_manifest`, `is_layer`, `compression_of`, ...)
rather than keeping its own sets of strings. A type not in the table is an opaque blob or
an artifact manifest: copied byte for byte, never interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"

# Manifests and indexes.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# Image configs.
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# The config of an artifact that has none (OCI 1.1): the two bytes `{}`.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

# Image layers.
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDISTRIBUTABLE_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Artifacts seen in the wild (blobs of these types are never unpacked).
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
SPDX_JSON = "application/spdx+json"

# Index entries buildx adds for provenance / SBOM attestations of a platform manifest.
ATTESTATION_TYPE_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_TYPE = "attestation-manifest"
ATTESTATION_SUBJECT_ANNOTATION = "vnd.docker.reference.digest"


@dataclass(frozen=True)
class MediaType:
    """What a media type is. `compression` is set for image layers only."""

    name: str
    is_index: bool = False
    is_image_manifest: bool = False
    is_schema1: bool = False
    is_config: bool = False
    is_layer: bool = False
    compression: str | None = None
    is_distributable: bool = True
    is_oci: bool = False


TABLE: dict[str, MediaType] = {
    entry.name: entry
    for entry in (
        MediaType(DOCKER_MANIFEST, is_image_manifest=True),
        MediaType(DOCKER_MANIFEST_LIST, is_index=True),
        MediaType(DOCKER_SCHEMA1, is_schema1=True),
        MediaType(DOCKER_SCHEMA1_SIGNED, is_schema1=True),
        MediaType(OCI_MANIFEST, is_image_manifest=True, is_oci=True),
        MediaType(OCI_INDEX, is_index=True, is_oci=True),
        MediaType(DOCKER_CONFIG, is_config=True),
        MediaType(OCI_CONFIG, is_config=True, is_oci=True),
        MediaType(OCI_EMPTY, is_oci=True),
        MediaType(DOCKER_LAYER, is_layer=True, compression=NONE),
        MediaType(DOCKER_LAYER_GZIP, is_layer=True, compression=GZIP),
        MediaType(
            DOCKER_FOREIGN_LAYER_GZIP, is_layer=True, compression=GZIP, is_distributable=False
        ),
        MediaType(OCI_LAYER, is_layer=True, compression=NONE, is_oci=True),
        MediaType(OCI_LAYER_GZIP, is_layer=True, compression=GZIP, is_oci=True),
        MediaType(OCI_LAYER_ZSTD, is_layer=True, compression=ZSTD, is_oci=True),
        MediaType(
            OCI_NONDISTRIBUTABLE_LAYER,
            is_layer=True,
            compression=NONE,
            is_distributable=False,
            is_oci=True,
        ),
        MediaType(
            OCI_NONDISTRIBUTABLE_LAYER_GZIP,
            is_layer=True,
            compression=GZIP,
            is_distributable=False,
            is_oci=True,
        ),
        MediaType(
            OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
            is_layer=True,
            compression=ZSTD,
            is_distributable=False,
            is_oci=True,
        ),
        MediaType(IN_TOTO),
        MediaType(COSIGN_SIMPLE_SIGNING),
        MediaType(HELM_CONFIG),
        MediaType(HELM_CHART),
        MediaType(SPDX_JSON),
    )
}

INDEX_TYPES = frozenset(name for name, entry in TABLE.items() if entry.is_index)
IMAGE_MANIFEST_TYPES = frozenset(name for name, entry in TABLE.items() if entry.is_image_manifest)
SCHEMA1_TYPES = frozenset(name for name, entry in TABLE.items() if entry.is_schema1)
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
CONFIG_TYPES = frozenset(name for name, entry in TABLE.items() if entry.is_config)
LAYER_TYPES = frozenset(name for name, entry in TABLE.items() if entry.is_layer)

# Sent on manifest GETs: every type we can use, never schema 1.
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# The layer type a fresh layer of each compression gets, per manifest family (Docker, OCI).
_LAYER_TYPE_FOR = {
    (entry.compression, entry.is_oci): name
    for name, entry in TABLE.items()
    if entry.is_layer and entry.is_distributable
}


def lookup(media_type: str) -> MediaType | None:
    return TABLE.get(media_type)


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_image_manifest(media_type: str) -> bool:
    return media_type in IMAGE_MANIFEST_TYPES


def is_manifest(media_type: str) -> bool:
    """An index or a schema 2 manifest: a registry stores it under /manifests/."""
    return media_type in MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    return media_type in CONFIG_TYPES


def is_layer(media_type: str) -> bool:
    """An image filesystem layer (a tar, maybe compressed); artifact blobs are not."""
    return media_type in LAYER_TYPES


def is_distributable(media_type: str) -> bool:
    entry = TABLE.get(media_type)
    return entry is None or entry.is_distributable


def compression_of(media_type: str) -> str:
    """The compression a layer media type declares; by suffix for types not in the table."""
    entry = TABLE.get(media_type)
    if entry is not None and entry.compression is not None:
        return entry.compression
    if media_type.endswith("gzip"):
        return GZIP
    if media_type.endswith("zstd"):
        return ZSTD
    return NONE


def layer_type_for(compression: str, oci: bool) -> str | None:
    """The layer media type for fresh `compression`d layers; None where the family has none."""
    return _LAYER_TYPE_FOR.get((compression, oci))
