"""Which tags of a repository a sync rule takes: allow/deny regexes, a version range, latest N.

Version ranges take PEP 440 specifiers (`>=3.18,<4`) and the semver forms skopeo sync and
regsync files use (`>= 3.12.0`, `^1.2`, `~1.2.3`, `1.x`, alternatives joined by `||`); tags
are read as versions by `packaging` (a leading `v` is allowed). A tag that is no version
never matches a range, and `latest: N` keeps the N highest versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from occystrap.errors import UsageError

# One constraint, with the separators around it: `, >= 1.2`, `^1.2`, `1.x`, `*`.
_CONSTRAINT = re.compile(
    r"[\s,]*(\^|~>?|==|!=|>=|<=|=|>|<)?\s*v?([0-9][0-9A-Za-z.*+-]*|[*xX])[\s,]*"
)


_STRICT_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?"
)


def tag_version(tag: str) -> Version | None:
    """The version a tag spells, or None (`latest`, `stable`, a commit id...)."""
    try:
        return Version(tag)
    except InvalidVersion:
        return None


def _release(text: str) -> list[int]:
    """`1.2.x` -> [1, 2]: the numeric components before any wildcard."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return parts


def _bump(parts: list[int], position: int) -> str:
    """The release after `parts` at `position` (0: major): ^1.2 -> 2, ~1.2 -> 1.3."""
    raised = [*parts[:position], parts[position] + 1]
    return ".".join(map(str, raised))


def _specifier(operator: str, version: str, text: str) -> str:
    """One semver constraint as PEP 440 specifiers."""
    parts = _release(version)
    wildcard = any(char in version for char in "xX*") or not parts
    if not parts:
        if operator in ("", "=", "==") and version.strip("xX*") == "":
            return ""  # `*`: any version
        raise UsageError(f"bad version range {text!r}: {version!r} is not a version")
    base = ".".join(map(str, parts))
    if operator == "^":
        # The leftmost non-zero component may not change (semver's caret).
        position = next((i for i, part in enumerate(parts) if part), len(parts) - 1)
        return f">={base},<{_bump(parts, position)}"
    if operator in ("~", "~>"):
        return f">={base},<{_bump(parts, min(1, len(parts) - 1))}"
    if operator in ("", "=", "=="):
        return f"=={base}.*" if wildcard else f"=={version}"
    return f"{operator}{base if wildcard else version}"


def parse_version_range(text: str) -> list[SpecifierSet]:
    """A range as alternatives (`||`), each a set of specifiers that must all hold."""
    alternatives: list[SpecifierSet] = []
    for alternative in text.split("||"):
        specifiers = []
        position, alternative = 0, alternative.strip()
        while position < len(alternative):
            match = _CONSTRAINT.match(alternative, position)
            if match is None:
                raise UsageError(
                    f"bad version range {text!r}: expected constraints such as '>=3.18',"
                    " '>=1.2,<2', '^1.2', '~1.2.3' or '1.x', alternatives joined by '||'"
                )
            spec = _specifier(match.group(1) or "", match.group(2), text)
            if spec:
                specifiers.append(spec)
            position = match.end()
        try:
            alternatives.append(SpecifierSet(",".join(specifiers)))
        except InvalidSpecifier:
            raise UsageError(f"bad version range {text!r}: not a version constraint") from None
    return alternatives


def _regexes(patterns: Iterable[str], what: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise UsageError(f"bad {what} pattern {pattern!r}: {exc}") from None
    return tuple(compiled)


@dataclass(frozen=True)
class TagFilter:
    """What a rule's `tags:` says; an empty filter takes every tag."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    semver: str | None = None
    latest: int | None = None
    # Exact tags (skopeo's `images: {repo: [tags]}`): only these, whatever the registry lists.
    exact: tuple[str, ...] = ()
    # Only MAJOR.MINOR.PATCH tags can be in range, as in skopeo's images-by-semver.
    strict_semver: bool = False
    _allow: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _deny: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _range: list[SpecifierSet] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow", _regexes(self.allow, "allow"))
        object.__setattr__(self, "_deny", _regexes(self.deny, "deny"))
        ranges = parse_version_range(self.semver) if self.semver else []
        object.__setattr__(self, "_range", ranges)
        if self.latest is not None and self.latest < 1:
            raise UsageError(f"tags.latest must be 1 or more, not {self.latest}")

    @property
    def needs_listing(self) -> bool:
        """Whether the registry's tag list must be read (exact tags need no listing)."""
        return not self.exact

    def _in_range(self, version: Version | None) -> bool:
        if not self._range:
            return True
        return version is not None and any(
            spec.contains(version, prereleases=spec.prereleases or False) for spec in self._range
        )

    def select(self, tags: Sequence[str]) -> list[str]:
        """The tags kept, in the registry's order (exact tags: in the order given)."""
        if self.exact:
            return list(dict.fromkeys(self.exact))
        kept = [
            tag
            for tag in dict.fromkeys(tags)
            if (not self._allow or any(p.search(tag) for p in self._allow))
            and not any(p.search(tag) for p in self._deny)
            and self._in_range(tag_version(tag))
            and not (self.strict_semver and not _STRICT_SEMVER.fullmatch(tag))
        ]
        if self.latest is None:
            return kept
        # The N highest versions, with every tag that spells one of them ("3.18", "3.18.0").
        versions = {version for tag in kept if (version := tag_version(tag)) is not None}
        newest = set(sorted(versions, reverse=True)[: self.latest])
        return [tag for tag in kept if tag_version(tag) in newest]
