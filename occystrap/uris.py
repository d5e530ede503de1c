"""The CLI's SOURCE and DESTINATION URIs, parsed into typed values with one-line errors."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from occystrap.errors import UsageError
from occystrap.registry.reference import (
    HOST_PATTERN,
    PATH_COMPONENT_PATTERN,
    ImageReference,
    parse_reference,
    validate_tag,
)

SCHEMES = ("registry", "tar", "dir", "quay")
DEFAULT_QUAY_HOST = "quay.io"

_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})
_DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_GLOB_PATTERN = re.compile(r"[a-z0-9._*?\[\]!/-]+")


@dataclass(frozen=True)
class RegistryURI:
    reference: ImageReference
    os: str | None = None
    arch: str | None = None
    variant: str | None = None
    insecure: bool | None = None


@dataclass(frozen=True)
class TarURI:
    path: Path


@dataclass(frozen=True)
class DirURI:
    path: Path
    unique_names: bool = False
    expand: bool = False


@dataclass(frozen=True)
class QuayURI:
    """Every repository of a Quay organisation matching `glob`, at `tag`."""

    org: str
    glob: str = "*"
    tag: str = "latest"
    since: datetime.date | None = None
    token: str | None = None
    host: str = DEFAULT_QUAY_HOST


ParsedURI = RegistryURI | TarURI | DirURI | QuayURI


def _query(text: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's options, refusing unknown or repeated keys so typos are not ignored."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UsageError(
            f"malformed query {query!r} in {text!r}: expected KEY=VALUE pairs joined by '&'"
        ) from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise UsageError(
                f"unknown option {key!r} in {text!r}: expected one of {', '.join(allowed)}"
            )
        if key in options:
            raise UsageError(f"option {key!r} given twice in {text!r}")
        options[key] = value
    return options


def _boolean(text: str, key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise UsageError(
        f"option {key}={value!r} in {text!r} is not a boolean: expected true/false, 1/0 or yes/no"
    )


def _non_empty(text: str, key: str, value: str | None) -> str | None:
    if value is not None and not value:
        raise UsageError(f"option {key!r} in {text!r} has no value: expected {key}=VALUE")
    return value


def _parse_registry(text: str, body: str, query: str) -> RegistryURI:
    options = _query(text, query, ("os", "arch", "variant", "insecure"))
    insecure = options.get("insecure")
    return RegistryURI(
        reference=parse_reference(body),
        os=_non_empty(text, "os", options.get("os")),
        arch=_non_empty(text, "arch", options.get("arch")),
        variant=_non_empty(text, "variant", options.get("variant")),
        insecure=None if insecure is None else _boolean(text, "insecure", insecure),
    )


def _path(text: str, body: str) -> Path:
    if not body:
        raise UsageError(f"no path in {text!r}: expected SCHEME://PATH")
    if "\0" in body:
        raise UsageError(f"path in {text!r} contains a NUL byte")
    return Path(body)


def _parse_dir(text: str, body: str, query: str) -> DirURI:
    options = _query(text, query, ("unique_names", "expand"))
    return DirURI(
        path=_path(text, body),
        unique_names=_boolean(text, "unique_names", options.get("unique_names", "false")),
        expand=_boolean(text, "expand", options.get("expand", "false")),
    )


def _parse_quay(text: str, body: str, query: str) -> QuayURI:
    expected = "quay://ORG[/GLOB[:TAG]][?since=YYYY-MM-DD&token=T&host=HOST]"
    options = _query(text, query, ("since", "token", "host"))
    org, _, rest = body.partition("/")
    if not PATH_COMPONENT_PATTERN.fullmatch(org):
        raise UsageError(f"invalid organisation {org!r} in {text!r}: expected {expected}")
    glob, _, tag = rest.partition(":") if rest else ("*", "", "")
    if not _GLOB_PATTERN.fullmatch(glob):
        raise UsageError(
            f"invalid repository pattern {glob!r} in {text!r}: expected lowercase names with "
            "glob wildcards * ? [...]"
        )
    if tag:
        validate_tag(tag, text)
    elif ":" in rest:
        raise UsageError(f"empty tag in {text!r}: expected {expected}")
    since = options.get("since")
    host = options.get("host", DEFAULT_QUAY_HOST)
    if not HOST_PATTERN.fullmatch(host):
        raise UsageError(f"invalid host {host!r} in {text!r}: expected HOST or HOST:PORT")
    return QuayURI(
        org=org,
        glob=glob,
        tag=tag or "latest",
        since=None if since is None else _date(text, since),
        token=_non_empty(text, "token", options.get("token")),
        host=host.lower(),
    )


def _date(text: str, value: str) -> datetime.date:
    try:
        if _DATE_PATTERN.fullmatch(value):
            return datetime.date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"invalid date since={value!r} in {text!r}: expected YYYY-MM-DD")


def parse_uri(text: str) -> ParsedURI:
    """Parse a SOURCE or DESTINATION argument; any problem is a one-line `UsageError`."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise UsageError(
            f"{text!r} is not a URI: expected registry://, tar://, dir:// or quay:// followed by "
            "a location"
        )
    if scheme not in SCHEMES:
        raise UsageError(
            f"unknown URI scheme {scheme!r} in {text!r}: expected registry://, tar://, dir://, "
            "quay://"
        )
    if scheme == "tar":
        return TarURI(path=_path(text, rest))  # no options, so '?' may be part of the path
    body, _, query = rest.partition("?")
    if scheme == "registry":
        return _parse_registry(text, body, query)
    if scheme == "dir":
        return _parse_dir(text, body, query)
    return _parse_quay(text, body, query)
