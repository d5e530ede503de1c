"""Filters: what `-f NAME[:KEY=VALUE,...]` applies to an image between source and destination.

A filter kind is one module of this package defining `FILTER = FilterKind(...)`, found at
first use; an installed distribution adds one through the entry-point group
`occystrap.filters` (the entry point names a `FilterKind`). The options of each `-f` are
checked against the kind's declared `FilterOption`s before anything runs, so a typo is a
one-line error naming the valid choices, not a surprise halfway through a copy.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from occystrap.endpoints import boolean_option
from occystrap.entrypoints import PluginGroup, instance_of, load_group
from occystrap.errors import UsageError
from occystrap.middleware.plugins import parse_spec

if TYPE_CHECKING:
    from occystrap.pipeline import ImageFilter

ENTRY_POINT_GROUP = "occystrap.filters"
SPEC_FORM = "-f NAME[:KEY=VALUE,...]"


@dataclass(frozen=True)
class FilterOption:
    """One option a filter takes: `KEY=VALUE` (for help texts: `KEY=PLACEHOLDER`)."""

    key: str
    placeholder: str
    required: bool = False
    repeatable: bool = False  # several values: KEY=A,B or KEY=A,KEY=B

    @property
    def form(self) -> str:
        more = f"[,{self.placeholder}...]" if self.repeatable else ""
        return f"{self.key}={self.placeholder}{more}"


class FilterOptions:
    """The options one `-f` gave, already checked against its kind; the getters convert
    values, failing with one line that names the filter."""

    def __init__(self, spec: str, values: dict[str, list[str]]) -> None:
        self.spec, self._values = spec, values

    def text(self, key: str, default: str | None = None) -> str | None:
        values = self._values.get(key)
        return values[0] if values else default

    def values(self, key: str) -> list[str]:
        return list(self._values.get(key, []))

    def boolean(self, key: str, default: bool = False) -> bool:
        return boolean_option(self.spec, key, self.text(key), default)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        text = self.text(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            raise UsageError(
                f"option {key}={text!r} in {self.spec!r} is not an integer from {minimum}"
                f" to {maximum}"
            )
        return value


@dataclass(frozen=True)
class FilterKind:
    """A filter as `-f` names it: its options, and how to build one from them."""

    name: str
    summary: str  # one line, for docs and error messages
    options: tuple[FilterOption, ...]
    build: Callable[[FilterOptions], ImageFilter]

    @property
    def form(self) -> str:
        """`NAME[:KEY=VALUE,...]` as this kind takes it, e.g. `exclude:pattern=GLOB[,GLOB...]`."""
        required = [option.form for option in self.options if option.required]
        optional = [option.form for option in self.options if not option.required]
        text = self.name + (":" + ",".join(required) if required else "")
        for position, form in enumerate(optional):
            text += f"[{',' if required or position else ':'}{form}]"
        return text


@cache
def filter_kinds() -> dict[str, FilterKind]:
    """Every filter by name: this package's modules, then entry points (a built-in wins).

    An entry point that fails to import is remembered and reported only when named."""
    found: dict[str, FilterKind] = {}
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FILTER", None)
        if isinstance(kind, FilterKind):
            found[kind.name] = kind
    for kind in _plugins().found.values():
        found.setdefault(kind.name, kind)
    return dict(sorted(found.items()))


def _plugins() -> PluginGroup:
    return load_group(ENTRY_POINT_GROUP, instance_of(FilterKind))


def _kind_named(name: str) -> FilterKind:
    kinds = filter_kinds()
    if name in kinds:
        return kinds[name]
    broken = _plugins().reason(name, "filter")
    if broken is not None:
        raise UsageError(broken)
    raise UsageError(f"unknown filter {name!r}; available: {', '.join(kinds) or 'none'}")


def parse_filter(spec: str) -> ImageFilter:
    """One `-f NAME[:KEY=VALUE,...]`, checked and built."""
    name, pairs = parse_spec(spec, "filter", SPEC_FORM, continuations=True)
    kind = _kind_named(name)
    declared = {option.key: option for option in kind.options}
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        option = declared.get(key)
        if option is None:
            valid = ", ".join(declared) or "no options"
            raise UsageError(f"unknown option {key!r} for filter {name!r}; valid: {valid}")
        if key in values and not option.repeatable:
            raise UsageError(f"option {key!r} given twice in {spec!r}")
        values.setdefault(key, []).append(value)
    for option in kind.options:
        if option.required and not any(values.get(option.key, [])):
            raise UsageError(f"filter {name!r} needs {option.form}: expected {kind.form}")
    try:
        return kind.build(FilterOptions(spec, values))
    except UsageError:
        raise
    except Exception as exc:  # a plug-in's failure becomes one actionable line
        raise UsageError(f"filter {name!r} failed to start: {exc}") from exc


def parse_filters(specs: Sequence[str]) -> list[ImageFilter]:
    """Every `-f`, in the order given (the order they are applied)."""
    return [parse_filter(spec) for spec in specs]
