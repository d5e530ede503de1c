"""The platform an image runs on (OS/ARCH[/VARIANT]), apart from the manifest code: every run
takes one in its settings, and a command that reads no manifest need not load the parser."""

from __future__ import annotations

from dataclasses import dataclass

from occystrap.errors import OccystrapError


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]`, as --platform takes it."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise OccystrapError(
            f"invalid platform {text!r}: expected OS/ARCHITECTURE[/VARIANT], e.g. linux/arm64/v8"
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
