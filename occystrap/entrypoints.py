"""The one plug-in loader: endpoints, filters and middlewares published by other
distributions under an entry-point group.

Each group is scanned once, when first asked for. A plug-in that fails to import (or is not
what its group takes) does not stop the others: it is remembered with a one-line reason,
reported only when it is asked for by name.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PluginGroup:
    """What one entry-point group gave: plug-ins by entry-point name, and the broken ones with
    why each could not be used."""

    found: dict[str, Any] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def reason(self, name: str, what: str) -> str | None:
        """One line naming the broken plug-in `name` (a `what`: "filter", "URI scheme"...),
        or None when no plug-in of that name failed."""
        if name not in self.broken:
            return None
        return f"{what} {name!r} could not be loaded: {self.broken[name]}"


_lock = threading.Lock()
_loaded: dict[str, PluginGroup] = {}


def load_group(group: str, accepts: Callable[[object], str | None] | None = None) -> PluginGroup:
    """Every entry point of `group`, imported once per process. `accepts(obj)` says why an
    object is not what the group takes (None when it is)."""
    with _lock:
        if group not in _loaded:
            found: dict[str, Any] = {}
            broken: dict[str, str] = {}
            for name, value in entry_points(group):
                try:
                    loaded = load_entry_point(value)
                except Exception as exc:  # a broken plug-in must not break the others
                    broken[name] = f"{type(exc).__name__}: {exc}"
                    continue
                refusal = accepts(loaded) if accepts is not None else None
                if refusal is None:
                    found[name] = loaded
                else:
                    broken[name] = refusal
            _loaded[group] = PluginGroup(found, broken)
        return _loaded[group]


def instance_of(kind: type) -> Callable[[object], str | None]:
    """An `accepts` for groups whose entry points are instances of `kind`."""

    def accepts(loaded: object) -> str | None:
        if isinstance(loaded, kind):
            return None
        return f"{type(loaded).__name__} is not a {kind.__name__}"

    return accepts


# -- finding entry points ----------------------------------------------------------------------
#
# Every run looks up the automatic middlewares, so the lookup is on every command's start-up.
# importlib.metadata finds them by importing itself (with zipfile, csv, email: about as much
# CPU as the scan) and wrapping each directory entry in objects; the same answer comes from
# reading the entry_points.txt of each distribution directory on sys.path, the first
# distribution of a name winning, as importlib.metadata decides. A zip or egg file on sys.path
# (never in an ordinary install) sends the lookup to importlib.metadata.

_METADATA_SUFFIXES = (".dist-info", ".egg-info")
_NAME_SEPARATORS = re.compile(r"[-_.]+")


def entry_points(group: str) -> list[tuple[str, str]]:
    """(name, `module:attr`) of each entry point of `group`, in sys.path order."""
    directories = tuple(entry or "." for entry in sys.path)
    if any(os.path.isfile(entry) for entry in directories):
        from importlib import metadata

        return [(entry.name, entry.value) for entry in metadata.entry_points(group=group)]
    with _scan_lock:
        if directories not in _scanned:
            _scanned[directories] = _every_group(directories)
        return list(_scanned[directories].get(group, ()))


# Every group of one sys.path, from one pass over its distributions: a run asks for two
# groups or more (the automatic middlewares and the named ones at least), and each pass reads
# every distribution's entry_points.txt.
_scan_lock = threading.Lock()
_scanned: dict[tuple[str, ...], dict[str, list[tuple[str, str]]]] = {}


def _every_group(directories: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """Group -> its (name, `module:attr`) entry points, the first distribution of a name
    winning."""
    groups: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for metadata_dir in _distribution_dirs(directories):
        stem = os.path.basename(metadata_dir).rsplit(".", 1)[0]  # NAME[-VERSION]
        name = _NAME_SEPARATORS.sub("_", stem.partition("-")[0]).lower()
        if name not in seen:
            seen.add(name)
            for group, entry in _entries(metadata_dir):
                groups.setdefault(group, []).append(entry)
    return groups


def _distribution_dirs(directories: tuple[str, ...]) -> Iterator[str]:
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:  # absent or unreadable entries are skipped, as importlib does
            continue
        for name in names:
            if name.endswith(_METADATA_SUFFIXES):
                yield os.path.join(directory, name)


def _entries(metadata_dir: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """(group, (name, `module:attr`)) of each entry point in the distribution's
    entry_points.txt."""
    try:
        with open(os.path.join(metadata_dir, "entry_points.txt"), encoding="utf-8") as text:
            lines = text.read().splitlines()
    except OSError:  # most distributions have none
        return
    section = None
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section is not None and "=" in line:
            name, _, value = line.partition("=")
            yield section, (name.strip(), value.partition("[")[0].strip())  # extras name no code


def load_entry_point(value: str) -> object:
    """What an entry point's `module[:attr.attr]` names, its module imported."""
    module, _, attributes = value.partition(":")
    loaded: object = importlib.import_module(module.strip())
    for attribute in attributes.strip().split(".") if attributes.strip() else ():
        loaded = getattr(loaded, attribute)
    return loaded
