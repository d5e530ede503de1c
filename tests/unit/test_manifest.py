"""Manifests: parsing every supported form, rejecting the rest, platform choice, building."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap import manifest as m
from occystrap import mediatypes as mt
from occystrap.errors import OccystrapError
from occystrap.manifest import (
    Descriptor,
    MalformedManifestError,
    Manifest,
    ManifestIndex,
    Platform,
    PlatformDescriptor,
    UnsupportedManifestError,
    build_manifest,
    image_info,
    parse_manifest,
    select_platform,
)


def _digest(seed: int) -> str:
    return f"sha256:{seed:064x}"


CONFIG = Descriptor(mt.DOCKER_CONFIG, _digest(1), 1234)
LAYERS = [
    Descriptor(mt.DOCKER_LAYER_GZIP, _digest(2), 100),
    Descriptor(mt.DOCKER_LAYER_GZIP, _digest(3), 200),
]


def _index(*platforms: dict | None, annotations: list[dict] | None = None) -> bytes:
    entries = []
    for position, platform in enumerate(platforms):
        entry = {
            "mediaType": mt.OCI_MANIFEST,
            "digest": _digest(100 + position),
            "size": 500,
        }
        if platform is not None:
            entry["platform"] = platform
        if annotations and annotations[position]:
            entry["annotations"] = annotations[position]
        entries.append(entry)
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    ).encode()


def test_docker_manifest_parses():
    raw = build_manifest(CONFIG, LAYERS, oci=False)
    parsed = parse_manifest(raw, mt.DOCKER_MANIFEST + "; charset=utf-8")
    assert parsed == Manifest(mt.DOCKER_MANIFEST, CONFIG, LAYERS, raw)


def test_media_type_falls_back_to_json_then_structure():
    raw = build_manifest(CONFIG, LAYERS, oci=False)
    assert parse_manifest(raw, "application/json").media_type == mt.DOCKER_MANIFEST
    bare = json.loads(raw)
    del bare["mediaType"]
    assert parse_manifest(json.dumps(bare).encode(), None).media_type == mt.OCI_MANIFEST
    index = json.loads(_index({"os": "linux", "architecture": "amd64"}))
    del index["mediaType"]
    assert isinstance(parse_manifest(json.dumps(index).encode(), "text/plain"), ManifestIndex)


def test_content_type_wins_over_embedded_media_type():
    raw = build_manifest(CONFIG, LAYERS, oci=False)
    assert parse_manifest(raw, mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST


def test_index_parses_platforms_and_annotations():
    raw = _index(
        {
            "os": "windows",
            "architecture": "amd64",
            "os.version": "10.0.17763.1",
            "os.features": ["win32k"],
        },
        None,
        annotations=[None, {"vnd.docker.reference.type": "attestation-manifest"}],
    )
    parsed = parse_manifest(raw, mt.OCI_INDEX)
    assert isinstance(parsed, ManifestIndex)
    first, second = parsed.manifests
    assert first.platform == Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",))
    assert second.platform is None and second.is_attestation


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', mt.DOCKER_SCHEMA1_SIGNED),
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', "application/json"),
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', None),
        (b"{}", mt.DOCKER_SCHEMA1),
    ],
)
def test_schema1_is_unsupported(raw, content_type):
    with pytest.raises(UnsupportedManifestError, match="schema 1 manifests are not supported"):
        parse_manifest(raw, content_type)


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "neither an image manifest nor an index"),
        ('{"layers": []}', "config is missing"),
        ('{"config": {"mediaType": "x", "digest": "sha256:ab", "size": 1}}', "layers is missing"),
        ('{"config": 7, "layers": []}', "config is not an object"),
        (
            '{"config": {"digest": "sha256:ab", "size": 1}, "layers": []}',
            "config.mediaType is missing",
        ),
        (
            '{"config": {"mediaType": "x", "digest": "nope", "size": 1}, "layers": []}',
            "not a digest",
        ),
        (
            '{"config": {"mediaType": "x", "digest": "sha256:ab", "size": -1}, "layers": []}',
            "negative",
        ),
        (
            '{"config": {"mediaType": "x", "digest": "sha256:ab", "size": true}, "layers": []}',
            "wrong type",
        ),
        (
            '{"config": {"mediaType": "x", "digest": "sha256:ab", "size": 1}, "layers": [{}]}',
            "layers[0].digest is missing",
        ),
        (
            '{"manifests": [{"mediaType": "x", "digest": "sha256:ab", "size": 1, '
            '"platform": {"os": "linux"}}]}',
            "manifests[0].platform.architecture is missing",
        ),
        (
            '{"manifests": [{"mediaType": "x", "digest": "sha256:ab", "size": 1, "urls": [1]}]}',
            "manifests[0].urls",
        ),
        ('{"manifests": "no"}', "manifests has the wrong type"),
    ],
)
def test_malformed_manifests_name_the_problem(document, complaint):
    with pytest.raises(MalformedManifestError) as raised:
        parse_manifest(document.encode(), None)
    assert complaint in str(raised.value)
    assert "\n" not in str(raised.value)


def test_deeply_nested_json_is_malformed_not_a_crash():
    with pytest.raises(MalformedManifestError):
        parse_manifest(b"[" * 100000, None)


@given(
    raw=st.binary(max_size=300),
    content_type=st.none() | st.sampled_from(sorted(mt.IMAGE_MANIFEST_TYPES | mt.INDEX_TYPES)),
)
def test_arbitrary_bytes_only_raise_occystrap_errors(raw, content_type):
    with contextlib.suppress(OccystrapError):
        parse_manifest(raw, content_type)


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_field_names = st.sampled_from(
    [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "platform",
        "os",
        "architecture",
        "variant",
    ]
)


@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            "config": st.dictionaries(_field_names, _json_value, max_size=5),
            "layers": st.lists(st.dictionaries(_field_names, _json_value, max_size=5), max_size=2),
            "manifests": st.lists(
                st.dictionaries(_field_names, _json_value, max_size=6), max_size=2
            ),
            "schemaVersion": st.integers(0, 3),
            "mediaType": _json_value,
        },
    )
)
def test_arbitrary_json_shapes_only_raise_occystrap_errors(document):
    with contextlib.suppress(OccystrapError):
        parse_manifest(json.dumps(document).encode(), None)


_descriptors = st.builds(
    Descriptor,
    media_type=st.sampled_from([mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER]),
    digest=st.integers(0, 2**256 - 1).map(_digest),
    size=st.integers(0, 2**40),
    urls=st.lists(st.text(max_size=10), max_size=2).map(tuple),
    annotations=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=2),
)


@given(layers=st.lists(_descriptors, max_size=5))
def test_build_then_parse_round_trips(layers):
    config = Descriptor(mt.OCI_CONFIG, _digest(9), 42)
    raw = build_manifest(config, layers, oci=True)
    parsed = parse_manifest(raw, mt.OCI_MANIFEST)
    assert parsed == Manifest(mt.OCI_MANIFEST, config, layers, raw)
    assert build_manifest(config, layers, oci=True) == raw


def test_build_is_canonical_and_relabels_family():
    raw = build_manifest(CONFIG, LAYERS, oci=True)
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    document = json.loads(raw)
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == mt.OCI_MANIFEST
    assert document["config"]["mediaType"] == mt.OCI_CONFIG
    assert {layer["mediaType"] for layer in document["layers"]} == {mt.OCI_LAYER_GZIP}
    back = json.loads(
        build_manifest(
            Descriptor(mt.OCI_CONFIG, _digest(1), 5),
            [Descriptor(mt.OCI_LAYER, _digest(2), 1)],
            oci=False,
        )
    )
    assert back["mediaType"] == mt.DOCKER_MANIFEST
    assert back["config"]["mediaType"] == mt.DOCKER_CONFIG
    assert back["layers"][0]["mediaType"] == mt.DOCKER_LAYER


def test_zstd_layers_cannot_go_in_a_docker_manifest():
    with pytest.raises(OccystrapError, match="zstd"):
        build_manifest(CONFIG, [Descriptor(mt.OCI_LAYER_ZSTD, _digest(2), 1)], oci=False)


def test_accept_header_lists_every_supported_type_and_not_schema1():
    accepted = {part.strip() for part in mt.ACCEPT_MANIFESTS.split(",")}
    assert accepted == mt.IMAGE_MANIFEST_TYPES | mt.INDEX_TYPES


MULTI = parse_manifest(
    _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
        {"os": "linux", "architecture": "s390x"},
        annotations=[
            None,
            None,
            None,
            None,
            {"vnd.docker.reference.type": "attestation-manifest"},
            {"vnd.docker.reference.type": "attestation-manifest"},
        ],
    ),
    mt.OCI_INDEX,
)


@pytest.mark.parametrize(
    ("os", "arch", "variant", "position"),
    [
        ("linux", "amd64", None, 0),
        (None, None, None, 0),
        ("linux", "x86_64", None, 0),
        ("Linux", "AMD64", None, 0),
        ("linux", "arm", None, 2),
        ("linux", "arm", "v6", 1),
        ("linux", "aarch64", None, 3),
        ("linux", "arm64", "v8", 3),
    ],
)
def test_select_platform(os, arch, variant, position):
    assert select_platform(MULTI, os, arch, variant) == MULTI.manifests[position]


def test_arm64_without_variant_counts_as_v8():
    index = parse_manifest(_index({"os": "linux", "architecture": "arm64"}), None)
    assert select_platform(index, "linux", "arm64", "v8") == index.manifests[0]
    assert select_platform(index, "linux", "arm64", None) == index.manifests[0]


def test_no_variant_request_prefers_unvariant_entry_then_any():
    index = parse_manifest(
        _index(
            {"os": "linux", "architecture": "amd64", "variant": "v3"},
            {"os": "linux", "architecture": "amd64"},
        ),
        None,
    )
    assert select_platform(index, "linux", "amd64", None) == index.manifests[1]
    only_v3 = parse_manifest(
        _index({"os": "linux", "architecture": "amd64", "variant": "v3"}), None
    )
    assert select_platform(only_v3, "linux", "amd64", None) == only_v3.manifests[0]


def test_no_match_lists_available_platforms_without_attestations():
    with pytest.raises(OccystrapError) as raised:
        select_platform(MULTI, "linux", "s390x", None)
    assert str(raised.value) == (
        "no linux/s390x image; available: linux/amd64, linux/arm/v6, linux/arm/v7, "
        "linux/arm64/v8; choose one with --platform OS/ARCH[/VARIANT]"
    )
    with pytest.raises(OccystrapError, match="no linux/arm64/v9 image"):
        select_platform(MULTI, "linux", "arm64", "v9")


_platforms = st.builds(
    lambda os, arch, variant: {
        "os": os,
        "architecture": arch,
        **({"variant": variant} if variant else {}),
    },
    st.sampled_from(["linux", "windows", "unknown"]),
    st.sampled_from(["amd64", "arm64", "arm", "386", "unknown", "x86_64"]),
    st.none() | st.sampled_from(["v6", "v7", "v8"]),
)


@given(
    platforms=st.lists(_platforms, max_size=6),
    os=st.sampled_from(["linux", "windows"]),
    arch=st.sampled_from(["amd64", "arm64", "arm", "aarch64"]),
    variant=st.none() | st.sampled_from(["v6", "v7", "v8"]),
)
def test_selection_properties(platforms, os, arch, variant):
    index = parse_manifest(_index(*platforms), None)
    try:
        chosen = select_platform(index, os, arch, variant)
    except OccystrapError as error:
        assert "available:" in str(error)
        assert not any(
            p["os"] == os
            and m.normalise_architecture(p["architecture"]) == m.normalise_architecture(arch)
            and (
                variant is None
                or p.get("variant", m.DEFAULT_VARIANTS.get(m.normalise_architecture(arch)))
                == variant
            )
            for p in platforms
        )
        return
    assert chosen in index.manifests
    assert not chosen.is_attestation
    assert chosen.platform.os == os
    assert m.normalise_architecture(chosen.platform.architecture) == m.normalise_architecture(arch)
    if variant is not None:
        assert (
            chosen.platform.variant or m.DEFAULT_VARIANTS.get(m.normalise_architecture(arch))
        ) == variant


def test_image_info_aligns_history_with_layers():
    manifest = parse_manifest(build_manifest(CONFIG, LAYERS, oci=False), None)
    config = {
        "os": "linux",
        "architecture": "arm64",
        "variant": "v8",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/init"],
            "Cmd": ["sh"],
            "Labels": {"a": "b"},
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(20), _digest(30)]},
        "history": [
            {"created_by": "ADD rootfs"},
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "RUN make"},
        ],
    }
    info = image_info(manifest, config)
    assert info["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert info["config_digest"] == CONFIG.digest
    assert info["media_type"] == mt.DOCKER_MANIFEST
    assert [layer["created_by"] for layer in info["layers"]] == ["ADD rootfs", "RUN make"]
    assert [layer["diff_id"] for layer in info["layers"]] == [_digest(20), _digest(30)]
    assert info["layers"][0] == {
        "digest": _digest(2),
        "size": 100,
        "media_type": mt.DOCKER_LAYER_GZIP,
        "compression": "gzip",
        "diff_id": _digest(20),
        "created_by": "ADD rootfs",
    }
    assert (info["env"], info["entrypoint"], info["cmd"], info["labels"], info["created"]) == (
        ["PATH=/bin"],
        ["/init"],
        ["sh"],
        {"a": "b"},
        "2024-01-01T00:00:00Z",
    )


def test_image_info_tolerates_sparse_config():
    manifest = parse_manifest(build_manifest(CONFIG, LAYERS, oci=False), None)
    info = image_info(manifest, {"history": "junk", "config": None})
    assert [layer["diff_id"] for layer in info["layers"]] == [None, None]
    assert info["env"] == [] and info["labels"] == {} and info["cmd"] is None


def test_platform_descriptor_is_a_descriptor():
    entry = MULTI.manifests[0]
    assert isinstance(entry, PlatformDescriptor) and isinstance(entry, Descriptor)
    assert str(entry.platform) == "linux/amd64"
