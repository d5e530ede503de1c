"""The sync file: our own YAML, or a skopeo sync YAML read as it is.

Ours:

    defaults: {referrers: true, platforms: [linux/amd64]}
    sync:
      - source: registry://docker.io/library/alpine
        target: registry://mirror:5000/library/alpine
        tags: {allow: ['^3\\.'], deny: ['-rc'], semver: '>=3.18', latest: 5}

A skopeo sync file (`skopeo sync --src yaml`) maps registry hosts to `images`,
`images-by-tag-regex`, `images-by-semver`, `tls-verify` and `credentials`; its destinations
are named as skopeo names them: DEST/BASENAME, or with `--scoped` DEST/HOST/REPOSITORY.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occystrap.credentials import Credential
from occystrap.errors import UsageError
from occystrap.platforms import Platform, parse_platform
from occystrap.registry.hosts import DOCKER_HUB_HOST, canonical_registry_host
from occystrap.sync.tags import TagFilter

_RULE_KEYS = frozenset({"source", "target", "tags", "referrers", "platforms"})
_DEFAULT_KEYS = _RULE_KEYS - {"source", "target"}
_TAG_KEYS = frozenset({"allow", "deny", "semver", "latest"})
_SKOPEO_KEYS = frozenset(
    {"images", "images-by-tag-regex", "images-by-semver", "tls-verify", "credentials"}
)


@dataclass(frozen=True)
class SyncRule:
    """One source (a repository, a catalog glob, a quay:// organisation) and its target."""

    source: str
    target: str
    tags: TagFilter = field(default_factory=TagFilter)
    referrers: bool = False
    platforms: tuple[Platform, ...] = ()


@dataclass(frozen=True)
class SyncSpec:
    """Every rule of a file, and credentials a skopeo file carried (for this machine only)."""

    rules: tuple[SyncRule, ...]
    credentials: Mapping[str, Credential] = field(default_factory=dict)


def load_spec(path: Path, dest: str | None = None, scoped: bool = False) -> SyncSpec:
    """Read `path`; a skopeo sync file needs `dest` (its destinations are not in the file)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the sync file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path} is not valid YAML{where}: fix the file and run again") from None
    return parse_spec(document, str(path), dest, scoped)


def parse_spec(
    document: object, name: str, dest: str | None = None, scoped: bool = False
) -> SyncSpec:
    if not isinstance(document, dict) or not document:
        raise UsageError(f"{name} holds no sync rules: expected a 'sync:' list or a skopeo file")
    if "sync" in document:
        if dest is not None or scoped:
            raise UsageError(
                f"--dest/--scoped are for skopeo sync files; {name} names its own targets"
            )
        return SyncSpec(_our_rules(document, name))
    if dest is None:
        raise UsageError(
            f"{name} is a skopeo sync file (no 'sync:' list): give the destination with"
            " --dest registry://HOST[/PREFIX]"
        )
    return _skopeo_spec(document, name, dest.rstrip("/"), scoped)


def _mapping(value: object, what: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """A mapping whose keys are among `allowed` (None: any key, e.g. repository names)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a mapping, not {type(value).__name__}")
    if allowed is None:
        return value
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in {what}: expected {', '.join(sorted(allowed))}"
        )
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(
        isinstance(item, str | int | float) for item in items
    ):
        raise UsageError(f"{what} must be a string or a list of strings")
    return tuple(str(item) for item in items)


def _tag_filter(value: object, what: str) -> TagFilter:
    tags = _mapping(value, what, _TAG_KEYS)
    latest = tags.get("latest")
    if latest is not None and (not isinstance(latest, int) or isinstance(latest, bool)):
        raise UsageError(f"{what}.latest must be a whole number")
    semver = tags.get("semver")
    return TagFilter(
        allow=_strings(tags.get("allow"), f"{what}.allow"),
        deny=_strings(tags.get("deny"), f"{what}.deny"),
        semver=None if semver is None else str(semver),
        latest=latest,
    )


def _platforms(value: object, what: str) -> tuple[Platform, ...]:
    return tuple(parse_platform(text) for text in _strings(value, what))


def _boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be true or false")
    return value


def _our_rules(document: dict, name: str) -> tuple[SyncRule, ...]:
    unknown = sorted(set(map(str, document)) - {"sync", "defaults"})
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in {name}: expected 'defaults' and 'sync'")
    defaults = _mapping(document.get("defaults"), f"{name}: defaults", _DEFAULT_KEYS)
    entries = document["sync"]
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"'sync' in {name} must be a non-empty list of source/target rules")
    rules = []
    for number, entry in enumerate(entries, 1):
        what = f"{name}: sync rule {number}"
        rule = {**defaults, **_mapping(entry, what, _RULE_KEYS)}
        for key in ("source", "target"):
            if not isinstance(rule.get(key), str) or not rule[key]:
                raise UsageError(f"{what} has no {key}: expected {key}: SCHEME://LOCATION")
        rules.append(
            SyncRule(
                rule["source"],
                rule["target"],
                _tag_filter(rule.get("tags"), f"{what}: tags"),
                _boolean(rule.get("referrers", False), f"{what}: referrers"),
                _platforms(rule.get("platforms"), f"{what}: platforms"),
            )
        )
    return tuple(rules)


def skopeo_destination(dest: str, registry: str, repository: str, scoped: bool) -> str:
    """Where skopeo sync puts a repository: DEST/BASENAME, or DEST/HOST/REPOSITORY scoped."""
    if not scoped:
        return f"{dest}/{repository.rpartition('/')[2]}"
    host = "docker.io" if registry == DOCKER_HUB_HOST else registry
    return f"{dest}/{host}/{repository}"


def _skopeo_spec(document: dict, name: str, dest: str, scoped: bool) -> SyncSpec:
    rules: list[SyncRule] = []
    credentials: dict[str, Credential] = {}
    for host, section in document.items():
        what = f"{name}: {host}"
        section = _mapping(section, what, _SKOPEO_KEYS)
        registry = canonical_registry_host(str(host))
        query = "" if section.get("tls-verify", True) else "?insecure=true"
        if "credentials" in section:
            login = _mapping(
                section["credentials"], f"{what}: credentials", frozenset({"username", "password"})
            )
            credentials[registry] = Credential(
                str(login.get("username", "")), str(login.get("password", ""))
            )

        def add(
            repository: str, tags: TagFilter, registry: str = registry, query: str = query
        ) -> None:
            if registry == DOCKER_HUB_HOST and "/" not in repository:
                repository = f"library/{repository}"
            rules.append(
                SyncRule(
                    f"registry://{registry}/{repository}{query}",
                    skopeo_destination(dest, registry, repository, scoped),
                    tags,
                )
            )

        images = _mapping(section.get("images"), f"{what}: images")
        for repository, tags in images.items():
            add(str(repository), TagFilter(exact=_strings(tags, f"{what}: images: {repository}")))
        by_regex = _mapping(section.get("images-by-tag-regex"), f"{what}: images-by-tag-regex")
        for repository, regex in by_regex.items():
            add(str(repository), TagFilter(allow=(str(regex),)))
        by_semver = _mapping(section.get("images-by-semver"), f"{what}: images-by-semver")
        for repository, constraint in by_semver.items():
            add(str(repository), TagFilter(semver=str(constraint), strict_semver=True))
    if not rules:
        raise UsageError(f"{name} names no images: expected HOST: {{images: {{REPO: [TAG]}}}}")
    return SyncSpec(tuple(rules), credentials)
