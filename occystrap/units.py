"""Sizes for people: the one byte formatter of progress lines, summaries and limit messages."""

from __future__ import annotations


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
