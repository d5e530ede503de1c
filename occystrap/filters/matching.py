"""Which layer paths a pattern names: globs (as .gitignore reads them) and regular expressions.

Shared by the `exclude` and `search` filters and the `search` command, so a pattern means the
same everywhere. Paths are compared in one form: no leading `/` or `./`, no empty or `.`
components (`./etc//passwd` is `etc/passwd`).

Globs: `*` and `?` match within one path component, `[...]` a character of a class, and a
component that is exactly `**` matches zero or more components. A glob without a `/` matches
the last component at any depth (`*.pyc`); one with a `/` matches from the layer's root
(`usr/share/doc/**`); a leading `/` only anchors (`/bin`); a trailing `/` is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from occystrap.errors import UsageError

ANY_DEPTH = "**"


def normalize_path(name: str) -> str:
    """A member name in the one form patterns are matched against."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


class PathMatcher(Protocol):
    def matches(self, path: str) -> bool:
        """Whether `path` (normalized) is named by this pattern."""
        ...


def _closure(states: set[int], parts: tuple[str, ...]) -> set[int]:
    """`states` plus every state reached by letting `**` components match nothing."""
    pending, reached = list(states), set(states)
    while pending:
        state = pending.pop()
        if state < len(parts) and parts[state] == ANY_DEPTH and state + 1 not in reached:
            reached.add(state + 1)
            pending.append(state + 1)
    return reached


@dataclass(frozen=True)
class Glob:
    text: str  # as the user wrote it
    parts: tuple[str, ...]  # anchored components, `**` among them

    def matches(self, path: str) -> bool:
        return self._match(path, or_ancestor=False)

    def matches_path_or_ancestor(self, path: str) -> bool:
        """Whether `path` or a directory above it matches (what excluding a directory means)."""
        return self._match(path, or_ancestor=True)

    def _match(self, path: str, or_ancestor: bool) -> bool:
        end = len(self.parts)
        states = _closure({0}, self.parts)
        for component in path.split("/") if path else ():
            if or_ancestor and end in states:
                return True
            following = set()
            for state in states:
                if state == end:
                    continue
                part = self.parts[state]
                if part == ANY_DEPTH:
                    following.add(state)
                elif fnmatchcase(component, part):
                    following.add(state + 1)
            if not following:
                return False
            states = _closure(following, self.parts)
        return end in states


def compile_glob(text: str) -> Glob:
    """A glob as the module docstring describes; an empty one is a one-line error."""
    body = text.rstrip("/")
    anchored = "/" in body
    parts = tuple(part for part in body.split("/") if part not in ("", "."))
    if not parts:
        raise UsageError(f"empty path pattern {text!r}: give a glob such as 'etc/*.conf'")
    if not anchored:
        parts = (ANY_DEPTH, *parts)
    return Glob(text, parts)


@dataclass(frozen=True)
class Regex:
    """A regular expression searched anywhere in the path (anchor it with ^ and $)."""

    expression: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.expression.search(path) is not None


def compile_matcher(pattern: str, regex: bool = False) -> PathMatcher:
    """A glob, or with `regex` a regular expression; a bad pattern is a one-line error."""
    if not regex:
        return compile_glob(pattern)
    try:
        return Regex(re.compile(pattern))
    except re.error as error:
        raise UsageError(f"bad regular expression {pattern!r}: {error}") from None
