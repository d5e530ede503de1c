"""The immutable image model: derived images never carry a stale manifest."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import DigestMismatchError
from occystrap.image import Image, VerifyingReader
from occystrap.manifest import Descriptor, build_manifest
from occystrap.mediatypes import DOCKER_CONFIG

from .image_builder import make_image, sha256

LAYERS = [{"etc/hosts": b"localhost\n"}, {"bin/sh": b"#!" + b"x" * 500}]


def with_manifest(image: Image) -> Image:
    raw = build_manifest(
        Descriptor(DOCKER_CONFIG, image.config_digest, len(image.config)),
        [Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers],
        oci=False,
    )
    return dataclasses.replace(image, manifest=raw)


def test_layers_and_images_are_frozen(tmp_path):
    image = make_image(tmp_path, LAYERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.layers[0].digest = "sha256:0"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.manifest = b"{}"  # type: ignore[misc]


def test_deriving_new_layers_rewrites_the_config_and_drops_the_manifest(tmp_path):
    image = with_manifest(make_image(tmp_path, LAYERS))
    derived = image.with_layers(image.layers[:1], created_by=["only one"])
    assert derived.manifest is None
    config = json.loads(derived.config)
    assert config["rootfs"]["diff_ids"] == [image.layers[0].diff_id]
    assert config["history"] == [{"created_by": "only one"}]
    assert derived.config_digest == sha256(derived.config) != image.config_digest


def test_recompressed_layers_keep_the_config_but_not_the_manifest(tmp_path):
    image = with_manifest(make_image(tmp_path, LAYERS))
    other = make_image(tmp_path, LAYERS, kind="zstd")
    derived = image.with_layers(other.layers)
    assert derived.config == image.config and derived.manifest is None


def test_a_stale_manifest_is_refused(tmp_path):
    image = with_manifest(make_image(tmp_path, LAYERS))
    with pytest.raises(ValueError, match="does not describe"):
        dataclasses.replace(image, layers=image.layers[:1])
    with pytest.raises(ValueError, match="does not describe"):
        dataclasses.replace(image, config=image.config + b" ")


@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=512))
def test_verifying_reader_accepts_exactly_the_named_bytes(data, step):
    reader = VerifyingReader(io.BytesIO(data), sha256(data), len(data), "blob")
    out = bytearray()
    while chunk := reader.read(step):
        out += chunk
    assert bytes(out) == data


@given(st.binary(min_size=1, max_size=2048), st.integers(min_value=0, max_value=2047))
def test_verifying_reader_refuses_any_changed_byte(data, position):
    position %= len(data)
    changed = bytearray(data)
    changed[position] ^= 0xFF
    reader = VerifyingReader(io.BytesIO(bytes(changed)), sha256(data), len(data), "blob")
    with pytest.raises(DigestMismatchError):
        reader.drain()


def test_verifying_reader_stops_a_body_longer_than_promised():
    endless = io.BytesIO(b"x" * 10_000)
    reader = VerifyingReader(endless, sha256(b"x" * 10), 10, "blob")
    with pytest.raises(DigestMismatchError, match="more than the 10 bytes"):
        reader.read(4096)
