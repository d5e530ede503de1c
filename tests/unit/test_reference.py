"""Image reference parsing: accepted forms, Docker Hub folding, spec validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import UsageError
from occystrap.registry.reference import ImageReference, parse_reference

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "docker.io/busybox",
            ImageReference("registry-1.docker.io", "library/busybox", "latest", None),
        ),
        (
            "index.docker.io/library/busybox:1.36",
            ImageReference("registry-1.docker.io", "library/busybox", "1.36", None),
        ),
        (
            "registry-1.docker.io/bitnami/redis:7",
            ImageReference("registry-1.docker.io", "bitnami/redis", "7", None),
        ),
        ("localhost:5000/a/b/c", ImageReference("localhost:5000", "a/b/c", "latest", None)),
        ("quay.io/org/img@" + DIGEST, ImageReference("quay.io", "org/img", None, DIGEST)),
        ("quay.io/org/img:v1@" + DIGEST, ImageReference("quay.io", "org/img", "v1", DIGEST)),
        ("[::1]:5000/img:t", ImageReference("[::1]:5000", "img", "t", None)),
        (
            "127.0.0.1:5000/a__b.c-d/e---f:T_1.x",
            ImageReference("127.0.0.1:5000", "a__b.c-d/e---f", "T_1.x", None),
        ),
        ("Example.COM/img", ImageReference("example.com", "img", "latest", None)),
        (
            "reg.example/img@sha512:" + "ab" * 64,
            ImageReference("reg.example", "img", None, "sha512:" + "ab" * 64),
        ),
    ],
)
def test_valid_references(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("busybox", "expected HOST"),
        ("/busybox", "expected HOST"),
        ("host/", "expected HOST"),
        ("host/Upper", "repository path component 'Upper'"),
        ("host/a//b", "repository path component ''"),
        ("host/a_-b", "repository path component"),
        ("host/-a", "repository path component"),
        ("host/img:", "empty tag"),
        ("host/img:.bad", "invalid tag"),
        ("host/img:" + "x" * 129, "invalid tag"),
        ("host/img@sha256:abc", "invalid digest"),
        ("host/img@sha256:" + "A" * 64, "invalid sha256 digest"),
        ("host/img@", "invalid digest"),
        ("-host/img", "registry host"),
        ("host:port/img", "registry host"),
        ("host/" + "a" * 256, "longer than 255"),
    ],
)
def test_invalid_references_say_what_is_wrong(text, complaint):
    with pytest.raises(UsageError, match=complaint) as raised:
        parse_reference(text)
    assert "\n" not in str(raised.value)


def test_reference_property_and_str():
    pinned = parse_reference("quay.io/org/img:v1@" + DIGEST)
    assert pinned.reference == DIGEST
    assert str(pinned) == "quay.io/org/img:v1@" + DIGEST
    tagged = parse_reference("quay.io/org/img:v1")
    assert tagged.reference == "v1"
    assert str(tagged) == "quay.io/org/img:v1"
    assert ImageReference("h", "r").reference == "latest"


def test_with_tag_drops_digest_and_validates():
    moved = parse_reference("quay.io/org/img@" + DIGEST).with_tag("v2")
    assert (moved.tag, moved.digest, moved.reference) == ("v2", None, "v2")
    with pytest.raises(UsageError):
        moved.with_tag("bad tag")


_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_host = st.sampled_from(
    ["localhost:5000", "quay.io", "127.0.0.1:8080", "reg.example.com", "[::1]:443"]
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
_digest = st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True)


@given(
    host=_host,
    components=st.lists(_component, min_size=1, max_size=3),
    tag=st.none() | _tag,
    digest=st.none() | _digest,
)
def test_formatted_references_round_trip(host, components, tag, digest):
    reference = ImageReference(host, "/".join(components), tag, digest)
    if tag is None and digest is None:
        reference = reference.with_tag("latest")
    assert parse_reference(str(reference)) == reference


@given(st.text(max_size=80))
def test_arbitrary_text_only_raises_usage_error(text):
    try:
        reference = parse_reference(text)
    except UsageError as error:
        assert "\n" not in str(error) or "\n" in text
        return
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize("host", ["127.0.0.1:99999", "registry.test:65536", "[::1]:0"])
def test_a_port_outside_1_to_65535_is_a_usage_error(host):
    with pytest.raises(UsageError, match="expected a port from 1 to 65535"):
        parse_reference(f"{host}/a/b:v1")


def test_the_highest_port_is_accepted():
    assert parse_reference("registry.test:65535/a/b:v1").registry == "registry.test:65535"
