"""Sizes and text for people: the one byte formatter of progress lines, summaries and limit
messages, and the one escaper of control characters in what is printed."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def human_bytes(n: float, binary: bool = False) -> str:
    """`n` bytes in decimal units (kB, MB, GB: progress and summaries, as rich and registries
    count), or with `binary` in the IEC units sizes are given in (`max_expand=4M` is 4 MiB), a
    whole number shown without decimals."""
    step, units = (1024, ("KiB", "MiB", "GiB")) if binary else (1000, ("kB", "MB", "GB"))
    if abs(n) < step:
        return f"{n:.0f} B"
    for unit in units:
        n /= step
        if abs(n) < step or unit == units[-1]:
            if binary and n == int(n):
                return f"{int(n)} {unit}"
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def printable(text: str) -> str:
    """`text` with control characters (C0, DEL, C1) shown as escapes, as skopeo shows them."""
    return _CONTROL.sub(lambda match: _escape(match.group()), text)


def _escape(character: str) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(character, f"\\x{ord(character):02x}")
