"""The one plug-in loader: endpoints, filters and middlewares published by other
distributions under an entry-point group.

Each group is scanned once, when first asked for. A plug-in that fails to import (or is not
what its group takes) does not stop the others: it is remembered with a one-line reason,
reported only when it is asked for by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
            from importlib.metadata import entry_points  # scanning installs: only when asked

            found: dict[str, Any] = {}
            broken: dict[str, str] = {}
            for entry in entry_points(group=group):
                try:
                    loaded = entry.load()
                except Exception as exc:  # a broken plug-in must not break the others
                    broken[entry.name] = f"{type(exc).__name__}: {exc}"
                    continue
                refusal = accepts(loaded) if accepts is not None else None
                if refusal is None:
                    found[entry.name] = loaded
                else:
                    broken[entry.name] = refusal
            _loaded[group] = PluginGroup(found, broken)
        return _loaded[group]


def instance_of(kind: type) -> Callable[[object], str | None]:
    """An `accepts` for groups whose entry points are instances of `kind`."""

    def accepts(loaded: object) -> str | None:
        if isinstance(loaded, kind):
            return None
        return f"{type(loaded).__name__} is not a {kind.__name__}"

    return accepts
