"""SOURCE/DESTINATION URI parsing: every scheme, options, and one-line UsageErrors."""

from __future__ import annotations

import datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.endpoints import parse_uri
from occystrap.endpoints.dir import DirURI
from occystrap.endpoints.quay import QuayURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.endpoints.tar import TarURI
from occystrap.errors import UsageError
from occystrap.registry.reference import ImageReference

DIGEST = "sha256:" + "f" * 64


def test_registry_uri_with_options():
    parsed = parse_uri(
        "registry://localhost:5000/a/b:v1?os=linux&arch=arm64&variant=v8&insecure=yes"
    )
    assert parsed == RegistryURI(
        ImageReference("localhost:5000", "a/b", "v1", None), "linux", "arm64", "v8", True
    )


def test_registry_uri_defaults_and_digest():
    assert parse_uri("registry://docker.io/busybox") == RegistryURI(
        ImageReference("registry-1.docker.io", "library/busybox", "latest", None)
    )
    assert parse_uri(f"registry://quay.io/o/i@{DIGEST}").reference.digest == DIGEST


@pytest.mark.parametrize("word", ["true", "1", "yes", "TRUE", "Yes"])
def test_true_words(word):
    assert parse_uri(f"registry://h/i?insecure={word}").insecure is True


@pytest.mark.parametrize("word", ["false", "0", "no", "No"])
def test_false_words(word):
    assert parse_uri(f"registry://h/i?insecure={word}").insecure is False


def test_tar_uri_keeps_whole_path():
    assert parse_uri("tar:///tmp/out.tar") == TarURI(Path("/tmp/out.tar"))
    assert parse_uri("tar://rel/what?.tar") == TarURI(Path("rel/what?.tar"))


def test_dir_uri_options():
    assert parse_uri("dir:///tmp/d") == DirURI(Path("/tmp/d"), False, False)
    assert parse_uri("dir://d?unique_names=true&expand=1") == DirURI(Path("d"), True, True)


def test_quay_uri_defaults_and_options():
    assert parse_uri("quay://myorg") == QuayURI("myorg")
    parsed = parse_uri(
        "quay://myorg/base-*:v2?since=2024-02-29&token=abc%2Fdef&host=Quay.Example:8443"
    )
    assert parsed == QuayURI(
        "myorg", "base-*", "v2", datetime.date(2024, 2, 29), "abc/def", "quay.example:8443"
    )
    assert parse_uri("quay://myorg/x").tag == "latest"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("foo://x", "unknown URI scheme 'foo' in 'foo://x': expected one of dir://, "),
        ("just-a-path", "is not a URI"),
        ("registry://busybox", "expected HOST"),
        ("registry://h/i?colour=red", "unknown option 'colour'"),
        ("registry://h/i?os=linux&os=windows", "given twice"),
        ("registry://h/i?insecure=maybe", "not a boolean"),
        ("registry://h/i?os=", "has no value"),
        ("registry://h/i?os", "malformed query"),
        ("tar://", "no path"),
        ("dir://", "no path"),
        ("dir://d?expand=sure", "not a boolean"),
        ("dir://d?flatten=1", "unknown option 'flatten'"),
        ("quay://", "invalid organisation"),
        ("quay://Org", "invalid organisation"),
        ("quay://org/x:", "empty tag"),
        ("quay://org/x:-bad", "invalid tag"),
        ("quay://org/X Y", "invalid repository pattern"),
        ("quay://org?since=2024-02-30", "invalid date"),
        ("quay://org?since=24-1-1", "invalid date"),
        ("quay://org?host=bad_host", "invalid host"),
        ("quay://org?token=", "has no value"),
    ],
)
def test_errors_are_one_line_and_say_what_is_wrong(text, complaint):
    with pytest.raises(UsageError) as raised:
        parse_uri(text)
    message = str(raised.value)
    assert complaint in message
    assert "\n" not in message


_component = st.from_regex(r"[a-z0-9]{1,4}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
_host = st.sampled_from(
    ["localhost:5000", "quay.io", "10.0.0.1:8080", "reg.example.com", "[::1]:5000"]
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", fullmatch=True)
_digest = st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True)
_word = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@given(
    host=_host,
    components=st.lists(_component, min_size=1, max_size=3),
    tag=_tag,
    digest=st.none() | _digest,
    os=st.none() | _word,
    arch=st.none() | _word,
    variant=st.none() | _word,
    insecure=st.none() | st.booleans(),
)
def test_generated_registry_uris_round_trip(
    host, components, tag, digest, os, arch, variant, insecure
):
    reference = ImageReference(host, "/".join(components), tag, digest)
    options = {"os": os, "arch": arch, "variant": variant}
    if insecure is not None:
        options["insecure"] = "true" if insecure else "false"
    query = urlencode({key: value for key, value in options.items() if value is not None})
    text = f"registry://{reference}" + (f"?{query}" if query else "")
    assert parse_uri(text) == RegistryURI(reference, os, arch, variant, insecure)


@given(st.text(max_size=100))
def test_arbitrary_text_only_raises_usage_error(text):
    try:
        parse_uri(text)
    except UsageError as error:
        assert "\n" not in str(error)


@given(scheme=st.sampled_from(["registry", "tar", "dir", "quay"]), rest=st.text(max_size=100))
def test_arbitrary_text_after_a_known_scheme_only_raises_usage_error(scheme, rest):
    try:
        parse_uri(f"{scheme}://{rest}")
    except UsageError as error:
        assert "\n" not in str(error)


def test_unknown_scheme_lists_every_known_scheme():
    with pytest.raises(UsageError) as raised:
        parse_uri("foo://x")
    for scheme in ("dir://", "quay://", "registry://", "tar://"):
        assert scheme in str(raised.value)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("quay://org?token=s3cret-t0ken&since=2024-13-01", "s3cret-t0ken"),
        ("registry://user:hunter2@host.example/repo?os=", "hunter2"),
        ("quay://Bad?token=s3cret-t0ken", "s3cret-t0ken"),
        # the same rules as log lines (occystrap.redaction): an API key is a secret too
        ("registry://host.example/repo:1?apikey=s3cret-k3y", "s3cret-k3y"),
        ("quay://org?since=2024-13-01&X-Amz-Signature=s1gnature", "s1gnature"),
    ],
)
def test_secrets_never_appear_in_errors(text, secret):
    with pytest.raises(UsageError) as raised:
        parse_uri(text)
    assert secret not in str(raised.value)
    assert "***" in str(raised.value)
