"""Endpoints: one module per URI scheme, each saying how its URI parses and what it opens.

A scheme module defines `SCHEME = Scheme(...)`. Every module of this package is found at
first use, and so is every `occystrap.endpoints` entry point of an installed distribution,
so adding a scheme is adding a file (or a plug-in): nothing shared changes.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from occystrap.entrypoints import PluginGroup, instance_of, load_group
from occystrap.errors import UsageError
from occystrap.redaction import redact_text

if TYPE_CHECKING:
    from occystrap.extract import ExpandPolicy
    from occystrap.image import Image
    from occystrap.middleware.builder import ChainSettings
    from occystrap.pipeline import ImageInput, ImageOutput, RunContext
    from occystrap.registry.reference import ImageReference
    from occystrap.settings import RunSettings

ENTRY_POINT_GROUP = "occystrap.endpoints"
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


def redact(text: str) -> str:
    """`text` with secrets (`user:pw@`, `token=...`, `apikey=...`) masked, for any message
    naming a URI (the same rules as log lines: occystrap.redaction)."""
    return redact_text(text, "***")


class Endpoint:
    """A parsed SOURCE or DESTINATION. Subclasses override what their scheme can do; the
    library asks an endpoint what it is (never which class it is)."""

    scheme: str = ""
    shown: str = ""  # the URI as given, secrets redacted: for messages
    #: True when the endpoint names many images (quay://): `images()` lists them.
    holds_many_images: bool = False
    #: What a copy into it does with blobs, as the summary says it: "uploaded" over the
    #: network (a registry, a bucket), "written" on this machine (a layout, a daemon, files).
    blobs_are: str = "written"

    def credential_scope(self) -> str | None:
        """Where this end's credentials apply: "HOST/REPOSITORY" for one registry image,
        "HOST" for other registry endpoints, None when it talks to no registry."""
        return None

    @property
    def image_reference(self) -> ImageReference | None:
        """The registry image this endpoint names, if it names one."""
        return None

    def describe(self) -> str:
        """What messages call this endpoint (the URI, secrets masked)."""
        return str(self)

    def chain_settings(self, chain: ChainSettings, settings: RunSettings) -> ChainSettings:
        """The run's chain settings with what this endpoint needs added (quay://: its API)."""
        return chain

    def images(self, ctx: RunContext) -> list[Endpoint]:
        """The single images this endpoint names, each an endpoint of its own."""
        return [self]

    def accepts_many_images(self) -> bool:
        """Whether, as a destination, it can take every image of a many-image source."""
        return False

    def destination_for(self, image: Endpoint) -> Endpoint:
        """Where `image`, one of a many-image source's, goes (see `accepts_many_images`)."""
        return self

    def inspect_keys(self, ctx: RunContext, image: Image, index_digest: str | None) -> dict:
        """Extra keys `inspect` reports for `image`, read from where it lives (a registry:
        `skopeo inspect`'s)."""
        return {}

    def open_input(self, ctx: RunContext) -> ImageInput:
        raise UsageError(
            f"{self.shown} cannot be a source: sources are {', '.join(source_forms())}"
        )

    def open_output(self, ctx: RunContext) -> ImageOutput:
        raise UsageError(
            f"{self.shown} cannot be a destination: destinations are"
            f" {', '.join(destination_forms())}"
        )

    def __str__(self) -> str:
        return self.shown


# A registry image without a scheme: a host (with a dot or a port, or localhost), then a path.
BARE_REFERENCE = re.compile(
    r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9.-]+:[0-9]+|\[[0-9A-Fa-f:]+\])"
    r"(?::[0-9]+)?/[^\s?]+(?:\?.*)?"
)


@dataclass(frozen=True)
class Scheme:
    name: str
    form: str  # the URI form for help texts, e.g. "tar://PATH"
    parse: Callable[[str, str], Endpoint]  # (the whole URI as shown, what follows "://")
    source: bool = True
    destination: bool = True


@cache
def schemes() -> dict[str, Scheme]:
    """Every scheme: this package's modules, then plug-ins' entry points."""
    found: dict[str, Scheme] = {}
    for module_name in sorted(_builtin_module_names()):
        scheme = getattr(importlib.import_module(f"{__name__}.{module_name}"), "SCHEME", None)
        if isinstance(scheme, Scheme):
            found[scheme.name] = scheme
    for scheme in _plugins().found.values():
        found.setdefault(scheme.name, scheme)
    return dict(sorted(found.items()))


def _plugins() -> PluginGroup:
    """Schemes of other distributions (read only when a name is not built in)."""
    return load_group(ENTRY_POINT_GROUP, instance_of(Scheme))


def scheme_named(name: str) -> Scheme | None:
    """The scheme called `name`, importing only its module when it is built in (a built-in
    wins over a plug-in of the same name, so no other module or entry point need load)."""
    module_name = name.replace("-", "_")
    if module_name.isidentifier() and module_name in _builtin_module_names():
        scheme = getattr(importlib.import_module(f"{__name__}.{module_name}"), "SCHEME", None)
        if isinstance(scheme, Scheme) and scheme.name == name:
            return scheme
    return schemes().get(name)


@cache
def _builtin_module_names() -> frozenset[str]:
    return frozenset(module.name for module in pkgutil.iter_modules(__path__))


def source_forms() -> list[str]:
    return [scheme.form for scheme in schemes().values() if scheme.source]


def destination_forms() -> list[str]:
    return [scheme.form for scheme in schemes().values() if scheme.destination]


def parse_uri(text: str) -> Endpoint:
    """Parse a SOURCE or DESTINATION argument; any problem is a one-line `UsageError`."""
    shown = redact(text)
    scheme, separator, rest = text.partition("://")
    if not separator and BARE_REFERENCE.fullmatch(text):
        # HOST[:PORT]/NAME[:TAG|@DIGEST], as crane, regctl and docker take it: a registry image.
        scheme, separator, rest, shown = "registry", "://", text, f"registry://{shown}"
    found = scheme_named(scheme) if separator else None
    if found is None:
        known = ", ".join(f"{name}://" for name in schemes())
        if not separator:
            raise UsageError(
                f"{shown!r} is not a URI: expected one of {known} followed by a location,"
                " or HOST/NAME[:TAG] for a registry image"
            )
        broken = _plugins().reason(scheme, "URI scheme")
        if broken is not None:
            raise UsageError(f"{broken} (in {shown!r})")
        raise UsageError(f"unknown URI scheme {scheme!r} in {shown!r}: expected one of {known}")
    endpoint = found.parse(shown, rest)
    endpoint.scheme, endpoint.shown = scheme, shown
    return endpoint


# -- helpers for scheme modules --------------------------------------------------------------


def query_options(text: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's options, refusing unknown or repeated keys so typos are not ignored."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UsageError(
            f"malformed query in {text!r}: expected KEY=VALUE pairs joined by '&'"
        ) from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            expected = ", ".join(allowed) if allowed else "no options"
            raise UsageError(f"unknown option {key!r} in {text!r}: expected {expected}")
        if key in options:
            raise UsageError(f"option {key!r} given twice in {text!r}")
        options[key] = value
    return options


def byte_size_option(text: str, key: str, value: str) -> int:
    """A size option (`123`, `512M`, `20G`); anything else is a one-line error."""
    from occystrap.extract import parse_byte_size  # tar and layer code: not for registry://

    try:
        return parse_byte_size(value)
    except ValueError as error:
        raise UsageError(f"{key} in {text!r}: {error}") from None


def boolean_option(text: str, key: str, value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise UsageError(
        f"option {key}={value!r} in {text!r} is not a boolean: expected true/false, 1/0 or yes/no"
    )


# The options of every output that expands layers (dir://?expand=true, oci://, mounts://).
EXPAND_OPTIONS = ("devices", "setuid", "max_expand")


def expand_policy(text: str, options: dict[str, str]) -> ExpandPolicy:
    """What expanding layers may reproduce (`devices`, `setuid`) and write (`max_expand`)."""
    from occystrap.extract import ExpandPolicy

    max_bytes = None
    if "max_expand" in options:
        max_bytes = byte_size_option(text, "max_expand", options["max_expand"])
    return ExpandPolicy(
        devices=boolean_option(text, "devices", options.get("devices")),
        setuid=boolean_option(text, "setuid", options.get("setuid")),
        max_bytes=max_bytes,
    )


EXPAND_FORM = "devices=BOOL&setuid=BOOL&max_expand=SIZE"


def path_and_expand_policy(text: str, rest: str) -> tuple[Path, ExpandPolicy]:
    """`PATH[?devices=&setuid=&max_expand=]`, the URI of an output laying out a root
    filesystem (oci://, mounts://)."""
    body, query = split_query(rest)
    options = query_options(text, query, EXPAND_OPTIONS)
    return path_of(text, body), expand_policy(text, options)


def non_empty_option(text: str, key: str, value: str | None) -> str | None:
    if value is not None and not value:
        raise UsageError(f"option {key!r} in {text!r} has no value: expected {key}=VALUE")
    return value


def path_of(text: str, body: str) -> Path:
    if not body:
        raise UsageError(f"no path in {text!r}: expected SCHEME://PATH")
    if "\0" in body:
        raise UsageError(f"path in {text!r} contains a NUL byte")
    return Path(body)


def split_query(rest: str) -> tuple[str, str]:
    body, _, query = rest.partition("?")
    return body, query
