"""TLS trust per registry host, kept where podman, skopeo and docker keep it: certs.d.

A directory named HOST[:PORT] under a certs.d root holds `*.crt` CA certificates to trust for
that host and `NAME.cert` + `NAME.key` client certificate pairs to present to it
(containers-certs.d(5), docker's "Verify repository client with certificates"). The first root
holding a directory for the host wins, as in containers/image.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occystrap.errors import UsageError

logger = logging.getLogger(__name__)

SYSTEM_CERTS_ROOTS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
CERTS_DIRS_ENV = "OCCYSTRAP_CERTS_DIRS"


def default_certs_roots(
    environ: Mapping[str, str] = os.environ, home: Path | None = None
) -> tuple[Path, ...]:
    """$OCCYSTRAP_CERTS_DIRS (os.pathsep-separated) if set, else the user's
    ${XDG_CONFIG_HOME:-~/.config}/containers/certs.d (rootless podman's), then the system roots."""
    listed = environ.get(CERTS_DIRS_ENV)
    if listed is not None:
        return tuple(Path(part) for part in listed.split(os.pathsep) if part)
    if environ.get("XDG_CONFIG_HOME"):
        config_home = Path(environ["XDG_CONFIG_HOME"])
    else:
        config_home = (home if home is not None else Path.home()) / ".config"
    return (config_home / "containers" / "certs.d", *SYSTEM_CERTS_ROOTS)


def host_cert_dirs(roots: Sequence[Path]) -> dict[str, Path]:
    """HOST[:PORT] -> its certificate directory, the first root naming a host winning."""
    found: dict[str, Path] = {}
    for root in roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:  # absent or unreadable roots are skipped, as containers/image does
            continue
        for entry in entries:
            if entry.is_dir():
                found.setdefault(entry.name.lower(), entry)
    return found


def _load_host_dir(context: ssl.SSLContext, directory: Path) -> None:
    """Trust every *.crt in `directory` and present its NAME.cert/NAME.key pairs."""
    files = sorted(path for path in directory.iterdir() if path.is_file())
    names = {path.name for path in files}
    for path in files:
        try:
            if path.suffix == ".crt":
                context.load_verify_locations(cafile=str(path))
            elif path.suffix == ".cert":
                key = path.with_suffix(".key")
                if key.name not in names:
                    raise UsageError(
                        f"client certificate {path} has no key {key.name} beside it;"
                        " add the key or remove the certificate"
                    )
                context.load_cert_chain(certfile=str(path), keyfile=str(key))
            elif path.suffix == ".key" and path.with_suffix(".cert").name not in names:
                raise UsageError(
                    f"client key {path} has no certificate {path.with_suffix('.cert').name}"
                    " beside it; add the certificate or remove the key"
                )
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load {path}: {exc}; it must be a readable PEM file") from exc


class _SystemTrustAtFirstHandshake(ssl.SSLContext):
    """A client context that loads the system trust store at its first handshake instead of
    when it is made: loading it costs about 40 ms of CPU, wasted by every run that talks
    only plain HTTP (or never reaches the network)."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        self._system_trust_lock = threading.Lock()
        self._system_trust_loaded = False

    def _load_system_trust(self) -> None:
        with self._system_trust_lock:
            if not self._system_trust_loaded and self.verify_mode != ssl.CERT_NONE:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._system_trust_loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_system_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_system_trust()
        return super().wrap_bio(*args, **kwargs)


def make_ssl_context(
    ca_cert: str | None = None, verify: bool = True, host_dir: Path | None = None
) -> ssl.SSLContext:
    """The system trust store, plus --ca-cert, plus a host's certs.d directory: what
    `ssl.create_default_context()` gives, the store loaded at the first handshake.

    With `verify` off the certificate is not checked at all (--tls-verify=false), but a client
    certificate from the host's directory is still presented.
    """
    context = _SystemTrustAtFirstHandshake(ssl.PROTOCOL_TLS_CLIENT)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:  # as create_default_context does
        context.keylog_filename = keylog
    if ca_cert is not None:
        try:
            context.load_verify_locations(cafile=ca_cert)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot load CA certificate file {ca_cert!r}: {exc}; give a readable PEM file"
            ) from exc
    if host_dir is not None:
        _load_host_dir(context, host_dir)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class TlsPolicy:
    """How to set up TLS for each host: shared settings plus the certs.d directories found."""

    ca_cert: str | None = None
    verify: bool = True
    host_dirs: Mapping[str, Path] = field(default_factory=dict)

    def directory_for(self, netloc: str) -> Path | None:
        """The certs.d directory for "host[:port]" as written in the URL, if any."""
        return self.host_dirs.get(netloc.lower())
