"""Image references (`HOST[:PORT]/NAME[:TAG][@DIGEST]`), validated per the distribution spec."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from occystrap.errors import UsageError
from occystrap.registry.hosts import DOCKER_HUB_HOST, canonical_registry_host

DEFAULT_TAG = "latest"
EXPECTED_FORM = "HOST[:PORT]/NAME[:TAG|@sha256:DIGEST]"
MAX_REPOSITORY_LENGTH = 255

_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOST_PATTERN = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
)
PATH_COMPONENT_PATTERN = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_PATTERN = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
# Algorithms whose encoded form the spec fixes exactly.
_KNOWN_DIGEST_ENCODINGS = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}


def _check(pattern: re.Pattern[str], value: str, what: str, text: str, expected: str) -> None:
    if not pattern.fullmatch(value):
        raise UsageError(f"invalid {what} {value!r} in {text!r}: expected {expected}")


def validate_tag(tag: str, text: str) -> None:
    _check(TAG_PATTERN, tag, "tag", text, "up to 128 of A-Z a-z 0-9 _ . - (not starting . or -)")


def validate_digest(digest: str, text: str) -> None:
    expected = "ALGORITHM:HEX such as sha256: and 64 lowercase hex digits"
    _check(DIGEST_PATTERN, digest, "digest", text, expected)
    algorithm, encoded = digest.split(":", 1)
    known = _KNOWN_DIGEST_ENCODINGS.get(algorithm)
    if known is not None:
        _check(known, encoded, f"{algorithm} digest", text, expected)


def validate_port(host: str, text: str) -> None:
    """A `host:port` whose port is a real TCP port (1-65535)."""
    _, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not host.endswith("]") and not 0 < int(port) < 65536:
        raise UsageError(f"invalid port {port} in {text!r}: expected a port from 1 to 65535")


def validate_repository(repository: str, text: str) -> None:
    for component in repository.split("/"):
        _check(
            PATH_COMPONENT_PATTERN,
            component,
            "repository path component",
            text,
            "lowercase letters and digits, separated by '.', '_', '__' or '-'",
        )
    if len(repository) > MAX_REPOSITORY_LENGTH:
        raise UsageError(
            f"repository name in {text!r} is longer than {MAX_REPOSITORY_LENGTH} characters"
        )


@dataclass(frozen=True)
class ImageReference:
    """One image in one registry; `registry` is canonical (Docker Hub is registry-1.docker.io)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in a URL: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> ImageReference:
        """The same repository at another tag (dropping any digest pin)."""
        validate_tag(tag, tag)
        return dataclasses.replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """Parse `HOST[:PORT]/NAME[:TAG|@DIGEST]` (or `:TAG@DIGEST`, where the digest wins).

    Without a tag or digest the tag is "latest"; a one-part name on Docker Hub gains "library/".
    """
    remainder, at, digest = text.partition("@")
    if at:
        validate_digest(digest, text)
    host, slash, path = remainder.partition("/")
    if not slash or not host or not path:
        raise UsageError(f"invalid image reference {text!r}: expected {EXPECTED_FORM}")
    _check(HOST_PATTERN, host, "registry host", text, "HOST, HOST:PORT or [IPv6]:PORT")
    validate_port(host, text)
    last_slash = path.rfind("/")
    repository, colon, tag = path.rpartition(":")
    if not colon or repository.rfind("/") != last_slash:
        repository, tag = path, ""
    elif not tag:
        raise UsageError(f"empty tag in {text!r}: expected {EXPECTED_FORM}")
    if tag:
        validate_tag(tag, text)
    validate_repository(repository, text)
    registry = canonical_registry_host(host)
    if registry == DOCKER_HUB_HOST and "/" not in repository:
        repository = f"library/{repository}"
    return ImageReference(
        registry=registry,
        repository=repository,
        tag=tag or (None if at else DEFAULT_TAG),
        digest=digest if at else None,
    )
