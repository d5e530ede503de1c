"""Third-party middlewares: found by entry point or registered from Python, wrapped by name.

A plug-in is a factory `factory(next_transport, options) -> httpx.BaseTransport`, published in the
entry-point group `occystrap.middleware` or passed to `register_middleware`. A plug-in
published in `occystrap.middleware.automatic` instead joins every chain, without options,
unless named with `--middleware` (then with the options given): it must pass on untouched the
requests it does not claim, and need nothing it lacks until it claims one (a cloud's
credential plug-in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from occystrap.entrypoints import PluginGroup, load_group
from occystrap.errors import UsageError

# -f specs are parsed here too (parse_spec), so a file-to-file copy loads this module: httpx
# loads with the chain that plug-ins wrap, not with it.
if TYPE_CHECKING:
    import httpx

ENTRY_POINT_GROUP = "occystrap.middleware"
AUTOMATIC_GROUP = "occystrap.middleware.automatic"
SPEC_FORM = "--middleware NAME[:KEY=VALUE,...], e.g. header:X-Pull-Through=yes"

MiddlewareFactory = Callable[["httpx.BaseTransport", dict[str, str]], "httpx.BaseTransport"]

_registered: dict[str, MiddlewareFactory] = {}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEY_RE = re.compile(r"[^=,\s]+")


def register_middleware(name: str, factory: MiddlewareFactory) -> None:
    """Make `factory` available as `name` without packaging it; it wins over an entry point."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad middleware name {name!r}: use letters, digits, '_', '.', '-'")
    _registered[name] = factory


def _callable(loaded: object) -> str | None:
    return None if callable(loaded) else f"{type(loaded).__name__} is not a middleware factory"


def _load_entry_points(group: str = ENTRY_POINT_GROUP) -> PluginGroup:
    """The plug-ins of `group`, imported once; failures are reported only when asked by name."""
    return load_group(group, _callable)


def automatic_specs(named: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The automatic plug-ins not already `named` with --middleware, without options."""
    factories = _load_entry_points(AUTOMATIC_GROUP).found
    return [(name, {}) for name in sorted(factories) if name not in named]


def available_middlewares() -> dict[str, MiddlewareFactory]:
    """Every usable plug-in by name: entry points, overridden by registered ones."""
    automatic = _load_entry_points(AUTOMATIC_GROUP).found
    factories = _load_entry_points().found
    return {**automatic, **factories, **_registered}


def parse_spec(
    value: str, what: str, form: str, continuations: bool = False
) -> tuple[str, list[tuple[str, str]]]:
    """Parse `NAME[:KEY=VALUE,...]` into the name and its (key, value) pairs, in order.

    A value may itself contain '='. With `continuations`, an item without '=' is one more
    value of the key before it (`pattern=a,b` gives two `pattern` pairs); otherwise it is an
    error. Shared by `--middleware` and `-f` so both read the same way."""
    name, sep, option_text = value.partition(":")
    if not _NAME_RE.fullmatch(name) or (sep and not option_text):
        raise UsageError(f"bad {what} {value!r}: expected {form}")
    pairs: list[tuple[str, str]] = []
    for item in option_text.split(",") if sep else []:
        key, has_value, option_value = item.partition("=")
        if not has_value and continuations and pairs and item:
            pairs.append((pairs[-1][0], item))
            continue
        if not has_value or not _KEY_RE.fullmatch(key):
            raise UsageError(f"bad {what} option {item!r} in {value!r}: expected {form}")
        pairs.append((key, option_value))
    return name, pairs


def parse_middleware_spec(value: str) -> tuple[str, dict[str, str]]:
    """Parse `NAME[:KEY=VALUE,...]`; a value may itself contain '='."""
    name, pairs = parse_spec(value, "middleware", SPEC_FORM)
    return name, dict(pairs)


def _factory_named(name: str) -> MiddlewareFactory:
    available = available_middlewares()
    if name in available:
        return available[name]
    for group in (ENTRY_POINT_GROUP, AUTOMATIC_GROUP):
        broken = _load_entry_points(group).reason(name, "middleware")
        if broken is not None:
            raise UsageError(broken)
    names = ", ".join(sorted(available)) or "none"
    raise UsageError(f"unknown middleware {name!r}; available: {names}")


def apply_plugins(
    transport: httpx.BaseTransport, specs: list[tuple[str, dict[str, str]]]
) -> httpx.BaseTransport:
    """Wrap `transport` in the named plug-ins; the first spec ends up outermost."""
    import httpx

    factories = [(name, options, _factory_named(name)) for name, options in specs]
    for name, options, factory in reversed(factories):
        try:
            wrapped = factory(transport, dict(options))
        except Exception as exc:  # any plug-in failure becomes one actionable line
            raise UsageError(f"middleware {name!r} failed to start: {exc}") from exc
        if not isinstance(wrapped, httpx.BaseTransport):
            raise UsageError(
                f"middleware {name!r} returned {type(wrapped).__name__}, not an httpx.BaseTransport"
            )
        transport = wrapped
    return transport
