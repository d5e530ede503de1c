"""Where a daemon listens: `?socket=`, else DOCKER_HOST (`unix://PATH`), else Docker's
default socket, else Podman's (root's, then the user's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from occystrap.errors import OccystrapError, UsageError

DOCKER_SOCKET = Path("/var/run/docker.sock")
PODMAN_ROOT_SOCKET = Path("/run/podman/podman.sock")
REGISTRY_HINT = "an image in a registry is registry://HOST/NAME[:TAG]"
HOW_TO_NAME = "name its socket with ?socket=PATH or DOCKER_HOST=unix://PATH"


@dataclass(frozen=True)
class DaemonSocket:
    path: Path
    origin: str  # where the path came from, for messages: "?socket=", "DOCKER_HOST", ...

    def __str__(self) -> str:
        return str(self.path)


def default_sockets(environ: Mapping[str, str]) -> list[Path]:
    """Where daemons listen by default: Docker's, then Podman's for root and for the user."""
    sockets = [DOCKER_SOCKET, PODMAN_ROOT_SOCKET]
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(Path(runtime_dir) / "podman" / "podman.sock")
    return sockets


def find_socket(
    option: str | None, environ: Mapping[str, str], defaults: list[Path] | None = None
) -> DaemonSocket:
    """The socket to use: `?socket=`, else DOCKER_HOST, else the first of `defaults` (those
    of `default_sockets`) that exists."""
    if option:
        return DaemonSocket(Path(option), "?socket=")
    docker_host = environ.get("DOCKER_HOST", "").strip()
    if docker_host:
        scheme, separator, path = docker_host.partition("://")
        if scheme != "unix" or not separator or not path:
            raise UsageError(
                f"DOCKER_HOST={docker_host!r} is not a Unix socket: occystrap talks to daemons"
                " over their Unix socket only; set DOCKER_HOST=unix://PATH or use ?socket=PATH"
            )
        return DaemonSocket(Path(path), "DOCKER_HOST")
    candidates = default_sockets(environ) if defaults is None else defaults
    for candidate in candidates:
        if candidate.exists():
            return DaemonSocket(candidate, "the default")
    raise OccystrapError(
        f"no Docker or Podman socket found (tried {', '.join(map(str, candidates))}): start"
        f" the daemon (or `podman system service`), or {HOW_TO_NAME}; {REGISTRY_HINT}"
    )
