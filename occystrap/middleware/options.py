"""The network options, each declared once: `RunSettings` (what a run was asked to do) and
`ChainSettings` (what the chain is built from) are both these plus their own fields, so a
new network option is one field here (and its command-line flag)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from occystrap.errors import UsageError
from occystrap.middleware.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_READ_TIMEOUT,
)


@dataclass
class NetworkSettings:
    retries: int = 3
    rate_limits: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    middlewares: tuple[str, ...] = ()
    quay_token: str | None = None
    http2: bool = True
    parallel: int = 4
    ca_cert: str | None = None
    tls_verify: bool = True
    # Roots of HOST[:PORT] certificate directories; None: the standard certs.d places.
    certs_dirs: tuple[Path, ...] | None = None
    insecure: bool = False  # plain HTTP to the registries URLs name (oci://, registry://)
    timeout: float = DEFAULT_READ_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        """Check what a caller gave, so a bad value is one line now, not a traceback later."""
        if self.certs_dirs is not None:
            self.certs_dirs = tuple(
                checked_path(part, "certs_dirs")
                for part in checked_sequence(self.certs_dirs, "certs_dirs")
            )
            for root in self.certs_dirs:
                if any(root.glob("*.crt")):
                    raise UsageError(
                        f"--certs-dir {root} holds certificates itself, so it is a host's"
                        " directory, not a root of HOST[:PORT]/ directories: give its parent,"
                        " or name it with --src-cert-dir/--dest-cert-dir"
                    )
        for name in ("rate_limits", "mirrors", "middlewares"):
            setattr(self, name, tuple(checked_sequence(getattr(self, name), name)))
        for name, lowest in (("retries", 0), ("parallel", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise UsageError(f"{name} takes a whole number from {lowest}; got {value!r}")

    def network(self) -> NetworkSettings:
        """Just the network options of these settings (a `RunSettings`' for its chain)."""
        return NetworkSettings(
            **{option.name: getattr(self, option.name) for option in fields(NetworkSettings)}
        )


def checked_path(value: object, name: str) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value:
        return Path(value)
    raise UsageError(f"{name} takes a path (str or Path); got {value!r}")


def checked_sequence(value: object, name: str) -> tuple[Any, ...]:
    """A list or tuple option; a lone string is refused (it would be read letter by letter)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise UsageError(f"{name} takes a list or tuple; got {value!r}")
