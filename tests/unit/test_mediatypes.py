"""The media-type table answers what each type is, and leaves unknown types opaque."""

import pytest

from occystrap import mediatypes as mt


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        (mt.OCI_LAYER_GZIP, mt.GZIP),
        (mt.DOCKER_FOREIGN_LAYER_GZIP, mt.GZIP),
        (mt.OCI_NONDISTRIBUTABLE_LAYER_ZSTD, mt.ZSTD),
        (mt.DOCKER_LAYER, mt.NONE),
        (mt.HELM_CHART, mt.GZIP),
    ],
)
def test_compression_of(media_type, expected):
    assert mt.compression_of(media_type) == expected


def test_kinds_are_disjoint_and_artifact_types_are_not_image_parts():
    assert not mt.INDEX_TYPES & mt.IMAGE_MANIFEST_TYPES
    assert not mt.LAYER_TYPES & mt.CONFIG_TYPES
    for artifact in (mt.IN_TOTO, mt.COSIGN_SIMPLE_SIGNING, mt.OCI_EMPTY, mt.HELM_CHART):
        assert not mt.is_layer(artifact)
        assert not mt.is_config(artifact)
        assert not mt.is_manifest(artifact)
    assert not mt.is_layer("application/x-unknown")
    assert mt.is_distributable("application/x-unknown")
    assert not mt.is_distributable(mt.DOCKER_FOREIGN_LAYER_GZIP)


def test_fresh_layer_types():
    assert mt.layer_type_for(mt.GZIP, oci=False) == mt.DOCKER_LAYER_GZIP
    assert mt.layer_type_for(mt.ZSTD, oci=True) == mt.OCI_LAYER_ZSTD
    assert mt.layer_type_for(mt.ZSTD, oci=False) is None
