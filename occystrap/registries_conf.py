"""registries.conf (containers-registries.conf(5), version 2) and its drop-ins, as podman,
skopeo and buildah read them: prefix rewrites, insecure and blocked registries, mirrors, and
short names (aliases, unqualified-search-registries).

Reading is pure: `load` takes the paths and returns a `RegistriesConf`; what the files mean for
one image reference is asked of that object. Nothing here talks to the network.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

from occystrap.envvars import REGISTRIES_CONF_ENV
from occystrap.errors import UsageError
from occystrap.registry.hosts import canonical_registry_host
from occystrap.registry.reference import (
    EXPECTED_FORM,
    HOST_PATTERN,
    ImageReference,
    parse_reference,
    validate_repository,
)
from occystrap.tomlfile import ConfigFileError, line_of, read_toml

LOG = logging.getLogger(__name__)

# Where the drop-in directories are (os.pathsep-separated; empty: none), replacing the
# standard ones: for tests and for machines whose system files must be ignored.
DROP_IN_DIRS_ENV = "OCCYSTRAP_REGISTRIES_CONF_D"
SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
SYSTEM_DROP_IN_DIR = Path("/etc/containers/registries.conf.d")

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
# Keys podman knows that occystrap does not act on: named in a warning, never silently ignored.
_UNSUPPORTED_KEYS = ("credential-helpers", "additional-layer-store-auth-helper")
_TOP_KEYS = (
    "version",
    "unqualified-search-registries",
    "short-name-mode",
    "registry",
    "aliases",
    *_UNSUPPORTED_KEYS,
)
_REGISTRY_KEYS = ("prefix", "location", "insecure", "blocked", "mirror-by-digest-only", "mirror")
_MIRROR_KEYS = ("location", "insecure", "pull-from-mirror")
# Patterns of [[registry]] entries, compiled (by re, once) when a file has one: most runs read
# a registries.conf without entries, and compiling took ~0.6 ms of every start-up.
_LOCATION = rf"{HOST_PATTERN.pattern}(?:/[a-z0-9._/-]*)?"
_WILDCARD_PREFIX = r"\*(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"


@dataclass(frozen=True)
class MirrorEntry:
    """One `[[registry.mirror]]`: a `HOST[:PORT][/NAMESPACE]` that may serve reads."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryEntry:
    """One `[[registry]]`; `origin` says where it was written, for messages."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[MirrorEntry, ...] = ()
    origin: str = ""

    def matches(self, name: str) -> int:
        """How long a match `name` (HOST/REPO[:TAG][@DIGEST]) makes with the prefix; -1: none."""
        if self.prefix.startswith("*."):
            host = name.partition("/")[0].partition(":")[0]
            return len(self.prefix) if host.endswith(self.prefix[1:]) else -1
        if name == self.prefix:
            return len(self.prefix)
        if not name.startswith(self.prefix):
            return -1
        boundary = name[len(self.prefix)]
        # ':' after a bare host would be a port, which names another registry.
        if boundary in "/@" or (boundary == ":" and "/" in self.prefix):
            return len(self.prefix)
        return -1


def _refuse_if_blocked(entry: RegistryEntry, shown: str) -> None:
    if entry.blocked:
        raise UsageError(
            f"{shown}: registry {entry.prefix} is blocked by {entry.origin};"
            " remove blocked = true there to use it"
        )


@dataclass(frozen=True)
class Alias:
    value: str
    origin: Path


@dataclass(frozen=True)
class RegistriesConf:
    registries: tuple[RegistryEntry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = ()
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    short_name_mode: str = "enforcing"
    files: tuple[Path, ...] = ()  # every file read, in order

    def entry_for(self, reference: ImageReference | str) -> RegistryEntry | None:
        """The `[[registry]]` with the longest prefix matching `reference` (or a registry's
        HOST[:PORT]), if any."""
        name = str(reference)
        best, length = None, -1
        for entry in self.registries:
            matched = entry.matches(name)
            if matched > length:
                best, length = entry, matched
        return best

    def apply(self, reference: ImageReference, shown: str) -> ImageReference:
        """Where `reference` really is: its prefix rewritten to the entry's location. A blocked
        registry is refused here, before any request. (Whether it is insecure is the
        transport's business: `insecure_host`.)"""
        entry = self.entry_for(reference)
        if entry is None:
            return reference
        _refuse_if_blocked(entry, shown)
        if entry.prefix.startswith("*.") or entry.location == entry.prefix:
            return reference
        return parse_reference(entry.location + str(reference)[len(entry.prefix) :])

    def refuse_blocked_host(self, host: str) -> None:
        """Refuse registry HOST[:PORT] as a whole (`login`) when the entry that would apply to
        its images is blocked; a blocked namespace of it (`host/team`) leaves the host usable."""
        entry = self.entry_for(host)
        if entry is not None:
            _refuse_if_blocked(entry, host)

    @cached_property
    def _insecure_hosts(self) -> tuple[frozenset[str], tuple[str, ...]]:
        """Insecure HOST[:PORT]s (registries' locations and mirrors) and wildcard domains."""
        hosts, domains = set(), []
        for entry in self.registries:
            if entry.insecure and entry.prefix.startswith("*."):
                domains.append(entry.prefix[1:])
            elif entry.insecure:
                hosts.add(entry.location.partition("/")[0])
            hosts.update(m.location.partition("/")[0] for m in entry.mirrors if m.insecure)
        return frozenset(hosts), tuple(domains)

    def insecure_host(self, netloc: str) -> bool:
        """Whether HOST[:PORT] may be spoken to without verified TLS, or in plain HTTP."""
        hosts, domains = self._insecure_hosts
        netloc = canonical_registry_host(netloc)
        host = netloc.partition(":")[0] if not netloc.startswith("[") else netloc
        return netloc in hosts or any(host.endswith(domain) for domain in domains)

    def resolve_short_name(self, text: str) -> tuple[ImageReference, ...]:
        """Where `NAME[:TAG|@DIGEST]` may be, in the order to look: its alias in [aliases],
        else each unqualified-search registry. With several of them, `enforcing` (the default
        here) refuses the name, listing them: occystrap never prompts, and a guess could
        fetch an impostor's image; `permissive` and `disabled` try them in order, as podman
        does when it cannot prompt."""
        name, suffix = split_name(text)
        alias = self.aliases.get(name)
        if alias is not None:
            return (parse_reference(alias.value + suffix),)
        registries = self.unqualified_search_registries
        if not registries:
            raise UsageError(
                f"{text!r} is a short name with no alias, and no unqualified-search-registries"
                f" are configured ({self._where()}): expected {EXPECTED_FORM}"
            )
        if len(registries) > 1 and self.short_name_mode == "enforcing":
            candidates = ", ".join(f"{registry}/{name}" for registry in registries)
            raise UsageError(
                f"short name {text!r} is ambiguous: it could be {candidates}; name the image"
                " in full, add an alias for it to [aliases] in registries.conf, or set"
                ' short-name-mode = "permissive" there to try each in turn'
            )
        return tuple(parse_reference(f"{registry}/{name}{suffix}") for registry in registries)

    def is_alias(self, name: str) -> bool:
        return name in self.aliases

    def _where(self) -> str:
        return ", ".join(str(path) for path in self.files) or "no registries.conf was found"


def split_name(text: str) -> tuple[str, str]:
    """`NAME` and what follows it (`:TAG`, `@DIGEST`, or both)."""
    name, at, digest = text.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    suffix = f"@{digest}" if at else ""
    if colon > last_slash:
        return name[:colon], name[colon:] + suffix
    return name, suffix


def is_short_name(text: str, conf: RegistriesConf) -> bool:
    """A name without a registry: no '/' at all, or one whose first component cannot be a host
    (no '.' or ':', not localhost) and which is an alias. Anything else keeps its first
    component as the registry host, as `registry://` always has."""
    name = split_name(text)[0]
    first, slash, _ = name.partition("/")
    if not slash:
        return True
    looks_like_host = "." in first or ":" in first or first == "localhost"
    return not looks_like_host and conf.is_alias(name)


# -- where the files are ----------------------------------------------------------------------


def config_home(environ: Mapping[str, str]) -> Path:
    """$XDG_CONFIG_HOME, else ~/.config."""
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"])
    return Path(environ.get("HOME") or Path.home()) / ".config"


def standard_paths(
    explicit: Path | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[Path, bool, tuple[Path, ...]]:
    """The main file, whether it must exist (it was named), and the drop-in directories, as
    containers/image chooses them: a named file (--registries-conf or
    $CONTAINERS_REGISTRIES_CONF) with the system and user drop-ins; else the user's file with
    the user's drop-ins; else the system file with both."""
    user_dir = config_home(environ) / "containers"
    user_file = user_dir / "registries.conf"
    user_drop_ins = user_dir / "registries.conf.d"
    if explicit is None and environ.get(REGISTRIES_CONF_ENV):
        explicit = Path(environ[REGISTRIES_CONF_ENV])
    drop_ins: tuple[Path, ...]
    if explicit is not None:
        main, required, drop_ins = explicit, True, (SYSTEM_DROP_IN_DIR, user_drop_ins)
    elif user_file.exists():
        main, required, drop_ins = user_file, False, (user_drop_ins,)
    else:
        main, required, drop_ins = (
            SYSTEM_REGISTRIES_CONF,
            False,
            (SYSTEM_DROP_IN_DIR, user_drop_ins),
        )
    listed = environ.get(DROP_IN_DIRS_ENV)
    if listed is not None:
        drop_ins = tuple(Path(part) for part in listed.split(os.pathsep) if part)
    return main, required, drop_ins


def load(explicit: Path | None = None, environ: Mapping[str, str] = os.environ) -> RegistriesConf:
    """The registries configuration from the standard places (see `standard_paths`)."""
    main, required, drop_in_dirs = standard_paths(explicit, environ)
    return load_files(main, required, drop_in_dirs)


def load_files(main: Path, required: bool, drop_in_dirs: Sequence[Path]) -> RegistriesConf:
    """`main` (skipped if absent and not `required`), then each directory's `*.conf` in name
    order, later files overriding earlier ones as containers/image merges them."""
    paths = []
    if required or main.exists():
        paths.append(main)
    for directory in drop_in_dirs:
        try:
            paths += sorted(p for p in directory.iterdir() if p.suffix == ".conf" and p.is_file())
        except OSError:  # absent or unreadable directories are skipped, as podman does
            continue
    conf = RegistriesConf()
    for path in paths:
        conf = merge(conf, parse_file(path))
    return conf


# -- one file ---------------------------------------------------------------------------------


@dataclass
class _FileSettings:
    """What one file sets; None: left to earlier files."""

    path: Path
    registries: list[RegistryEntry] = field(default_factory=list)
    search: tuple[str, ...] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    mode: str | None = None


def merge(conf: RegistriesConf, later: _FileSettings) -> RegistriesConf:
    """`conf` overridden by a later file: a [[registry]] replaces the one with its prefix,
    aliases are added (an empty value removes one), the other settings replace."""
    registries = {entry.prefix: entry for entry in conf.registries}
    registries.update({entry.prefix: entry for entry in later.registries})
    aliases = dict(conf.aliases)
    for name, value in later.aliases.items():
        if value:
            aliases[name] = Alias(value, later.path)
        else:
            aliases.pop(name, None)
    return replace(
        conf,
        registries=tuple(registries.values()),
        unqualified_search_registries=(
            conf.unqualified_search_registries if later.search is None else later.search
        ),
        aliases=aliases,
        short_name_mode=later.mode or conf.short_name_mode,
        files=(*conf.files, later.path),
    )


def parse_file(path: Path) -> _FileSettings:
    document, text = read_toml(path)
    return parse_document(document, text, path)


class _Checker:
    """Type checks that fail in one line naming the file and the key's line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    def fail(self, message: str, key: str, table: str | None = None, index: int = 0) -> NoReturn:
        line = line_of(self.text, key, table, index)
        raise ConfigFileError(f"{self.path}:{line}: {message}")

    def check_keys(
        self,
        found: Mapping[str, Any],
        known: Sequence[str],
        where: str,
        table: str | None,
        index: int,
    ) -> None:
        for key in found:
            if key not in known:
                self.fail(
                    f"unknown key {key!r} in {where}: expected one of {', '.join(known)}",
                    key,
                    table,
                    index,
                )

    def value(
        self, found: Mapping[str, Any], key: str, kind: type, table: str | None, index: int
    ) -> Any:
        value = found.get(key)
        if value is not None and not isinstance(value, kind):
            self.fail(f"{key} must be a {kind.__name__}, not {value!r}", key, table, index)
        return value

    def strings(
        self, found: Mapping[str, Any], key: str, table: str | None = None, index: int = 0
    ) -> list[str] | None:
        value = self.value(found, key, list, table, index)
        if value is not None and not all(isinstance(item, str) for item in value):
            self.fail(f"{key} must be a list of strings", key, table, index)
        return value


def parse_document(document: Mapping[str, Any], text: str, path: Path) -> _FileSettings:
    check = _Checker(path, text)
    if "registries" in document:
        check.fail(
            "this is the version 1 format ([registries.search] etc.), which occystrap does not"
            " read; convert it to version 2 ([[registry]], unqualified-search-registries)",
            "registries",
        )
    check.check_keys(document, _TOP_KEYS, "registries.conf", None, 0)
    version = document.get("version", "2")
    if version != "2":
        check.fail(f'version must be "2", not {version!r}', "version")
    for key in _UNSUPPORTED_KEYS:
        if key in document:
            LOG.warning("%s: %s is not supported by occystrap and has no effect", path, key)
    settings = _FileSettings(path)
    search = check.strings(document, "unqualified-search-registries")
    if search is not None:
        for registry in search:
            if not HOST_PATTERN.fullmatch(registry):
                check.fail(
                    f"unqualified-search-registries: {registry!r} is not a registry HOST[:PORT]",
                    "unqualified-search-registries",
                )
        settings.search = tuple(search)
    mode = check.value(document, "short-name-mode", str, None, 0)
    if mode is not None and mode not in SHORT_NAME_MODES:
        check.fail(
            f"short-name-mode must be one of {', '.join(SHORT_NAME_MODES)}, not {mode!r}",
            "short-name-mode",
        )
    settings.mode = mode
    aliases = check.value(document, "aliases", dict, None, 0) or {}
    for name, value in aliases.items():
        settings.aliases[name] = _check_alias(check, name, value)
    registries = check.value(document, "registry", list, None, 0) or []
    for index, table in enumerate(registries):
        settings.registries.append(_parse_registry(check, table, index, path))
    return settings


def _check_alias(check: _Checker, name: str, value: object) -> str:
    def fail(message: str) -> NoReturn:
        check.fail(f"alias {name!r}: {message}", name, "aliases")

    if not isinstance(value, str):
        fail(f"the value must be a string, not {value!r}")
    if split_name(name)[1] or ":" in name.partition("/")[0] or "." in name.partition("/")[0]:
        fail("an alias is a short name: no registry host, tag or digest")
    _validate_alias_name(name, check)
    if value:
        host = value.partition("/")[0]
        if "/" not in value or not ("." in host or ":" in host or host == "localhost"):
            fail(f"{value!r} must name its registry, e.g. docker.io/library/{name}")
        if split_name(value)[1]:
            fail(f"{value!r} must not carry a tag or digest")
        try:
            parse_reference(value)
        except UsageError as exc:
            fail(str(exc))
    return value


def _validate_alias_name(name: str, check: _Checker) -> None:
    try:
        validate_repository(name, name)
    except UsageError as exc:
        check.fail(f"alias {name!r}: {exc}", name, "aliases")


def _location(check: _Checker, value: str, key: str, table: str, index: int) -> str:
    """A location without scheme, its host canonical (docker.io and its aliases are one)."""
    if "://" in value:
        check.fail(
            f"{key} {value!r} must not have a scheme (URI schemes are not supported)",
            key,
            table,
            index,
        )
    value = value.rstrip("/")
    if not re.fullmatch(_LOCATION, value):
        check.fail(f"{key} {value!r} is not HOST[:PORT][/NAMESPACE]", key, table, index)
    host, slash, path = value.partition("/")
    return canonical_registry_host(host) + slash + path


def _parse_registry(check: _Checker, table: object, index: int, path: Path) -> RegistryEntry:
    if not isinstance(table, dict):
        check.fail("registry must be an array of tables: [[registry]]", "registry")
    check.check_keys(table, _REGISTRY_KEYS, "[[registry]]", "registry", index)
    prefix = check.value(table, "prefix", str, "registry", index)
    location = check.value(table, "location", str, "registry", index)
    if not prefix and not location:
        check.fail("[[registry]] needs a prefix or a location", "", "registry", index)
    if prefix and prefix.startswith("*"):
        if not re.fullmatch(_WILDCARD_PREFIX, prefix):
            check.fail(
                f"prefix {prefix!r}: a wildcard prefix is *.DOMAIN", "prefix", "registry", index
            )
        if location:
            check.fail(
                f"prefix {prefix!r} is a wildcard, so it cannot have a location",
                "location",
                "registry",
                index,
            )
        prefix = prefix.lower()
        location = prefix
    else:
        if prefix:
            prefix = _location(check, prefix, "prefix", "registry", index)
        if location:
            location = _location(check, location, "location", "registry", index)
        prefix = prefix or location
        location = location or prefix
    flags = {
        key: bool(check.value(table, key, bool, "registry", index))
        for key in ("insecure", "blocked", "mirror-by-digest-only")
    }
    mirrors = []
    for mirror_index, mirror in enumerate(
        check.value(table, "mirror", list, "registry", index) or []
    ):
        mirrors.append(
            _parse_mirror(check, mirror, index, mirror_index, flags["mirror-by-digest-only"])
        )
    if mirrors and prefix.startswith("*."):
        check.fail("mirrors of a wildcard prefix are not supported", "mirror", "registry", index)
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=flags["insecure"],
        blocked=flags["blocked"],
        mirrors=tuple(mirrors),
        origin=f"{path}:{line_of(check.text, '', 'registry', index)} (prefix {prefix!r})",
    )


def _parse_mirror(
    check: _Checker, table: object, index: int, mirror_index: int, digest_only: bool
) -> MirrorEntry:
    if not isinstance(table, dict):
        check.fail(
            "mirror must be an array of tables: [[registry.mirror]]", "mirror", "registry", index
        )
    where = ("registry.mirror", _mirror_occurrence(check.text, index, mirror_index))
    check.check_keys(table, _MIRROR_KEYS, "[[registry.mirror]]", *where)
    location = check.value(table, "location", str, *where)
    if not location:
        check.fail("[[registry.mirror]] needs a location", "", *where)
    pull = check.value(table, "pull-from-mirror", str, *where)
    if pull is not None and pull not in PULL_FROM_MIRROR:
        check.fail(
            f"pull-from-mirror must be one of {', '.join(PULL_FROM_MIRROR)}, not {pull!r}",
            "pull-from-mirror",
            *where,
        )
    if digest_only and pull not in (None, "digest-only"):
        check.fail(
            f"pull-from-mirror = {pull!r} contradicts mirror-by-digest-only = true",
            "pull-from-mirror",
            *where,
        )
    return MirrorEntry(
        location=_location(check, location, "location", *where),
        insecure=bool(check.value(table, "insecure", bool, *where)),
        pull_from_mirror=pull or ("digest-only" if digest_only else "all"),
    )


def _mirror_occurrence(text: str, registry_index: int, mirror_index: int) -> int:
    """Which `[[registry.mirror]]` header of the file is this registry's `mirror_index`-th."""
    headers = re.findall(r"(?m)^\s*\[\[\s*(registry(?:\.mirror)?)\s*\]\]", text)
    registry_seen, mirrors_before = -1, 0
    for header in headers:
        if header == "registry":
            registry_seen += 1
        elif registry_seen < registry_index:
            mirrors_before += 1
    return mirrors_before + mirror_index


# -- the configuration in effect for a run -----------------------------------------------------

# The configuration, or how to load it: a run that names no registry never reads the files.
_active: RegistriesConf | Callable[[], RegistriesConf] = RegistriesConf()
_lock = threading.Lock()


def active() -> RegistriesConf:
    """The registries configuration `registry://` references are resolved with (empty until
    the CLI, or a library caller, activates one); loaded here, at first use, if it was
    activated as a loader."""
    global _active
    with _lock:
        if callable(_active):
            _active = _active()
        return _active


def activate(conf: RegistriesConf | Callable[[], RegistriesConf]) -> None:
    """Make `conf` (or what the loader `conf` returns, when first asked) the configuration for
    the rest of this process: the CLI does, once."""
    global _active
    with _lock:
        _active = conf


@contextmanager
def activated(conf: RegistriesConf) -> Iterator[RegistriesConf]:
    """`conf` in effect for a block, the earlier one afterwards."""
    earlier = active()
    activate(conf)
    try:
        yield conf
    finally:
        activate(earlier)
