"""Registry credentials from the command line, podman's auth file and Docker's config.json.

Lookups are by registry host so that each host only ever gets its own secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occystrap.errors import UsageError

logger = logging.getLogger(__name__)

# Docker keeps Hub credentials under this historical key whatever name the user typed.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_HELPER_TIMEOUT_SECONDS = 60
# A credential helper's Username meaning "Secret is an identity (refresh) token".
_IDENTITY_TOKEN_USERNAME = "<token>"


@dataclass(frozen=True)
class Credential:
    """A username/password pair, or an OAuth2 refresh (identity) token; repr hides secrets."""

    username: str | None
    password: str | None = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


def normalise_host(key: str) -> str:
    """Reduce a config key or URL host ("https://Host:5000/v1/", "host/org") to "host[:port]".

    Every Docker Hub alias becomes the one Hub key so they share credentials.
    """
    host = key.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].lower()
    if host in _DOCKER_HUB_HOSTS:
        return DOCKER_HUB_KEY
    return host


def _run_helper(name: str, host: str) -> Credential | None:
    """Ask `docker-credential-NAME get` for a host (Hub as its URL); failure means none."""
    program = f"docker-credential-{name}"
    try:
        completed = subprocess.run(
            [program, "get"],
            input=host,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("credential helper %s unusable for %s: %s", program, host, type(exc).__name__)
        return None
    if completed.returncode != 0:
        logger.debug(
            "credential helper %s has no credential for %s (exit %d)",
            program,
            host,
            completed.returncode,
        )
        return None
    try:
        answer = json.loads(completed.stdout)
        username = answer.get("Username") or None
        secret = answer.get("Secret") or None
    except (ValueError, AttributeError):
        logger.debug("credential helper %s gave unreadable output for %s", program, host)
        return None
    if not secret:
        logger.debug("credential helper %s returned an empty secret for %s", program, host)
        return None
    if username == _IDENTITY_TOKEN_USERNAME:
        return Credential(username=None, password=None, identity_token=secret)
    return Credential(username=username, password=secret)


def _credential_from_auths_entry(entry: Any, path: Path, key: str) -> Credential | None:
    """Read one `auths` entry: base64 `auth`, or `username`/`password`, or `identitytoken`."""
    if not isinstance(entry, dict):
        raise UsageError(f"{path}: auths entry {key!r} is not an object; fix or remove it")
    username = entry.get("username") or None
    password = entry.get("password") or None
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError, TypeError):
            raise UsageError(
                f"{path}: the auth value for {key!r} is not base64 user:password; "
                "log in again to rewrite it"
            ) from None
        username, separator, password = decoded.partition(":")
        if not separator:
            raise UsageError(
                f"{path}: the auth value for {key!r} has no ':' between user and password; "
                "log in again to rewrite it"
            )
    identity_token = entry.get("identitytoken") or None
    if identity_token:
        return Credential(username=username, password=password, identity_token=identity_token)
    if username and password:
        return Credential(username=username, password=password)
    return None


@dataclass
class _ConfigFile:
    """One parsed config file: which helper or stored credential serves each host."""

    path: Path
    auths: dict[str, Credential | None]
    cred_helpers: dict[str, str]
    creds_store: str | None

    @classmethod
    def read(cls, path: Path) -> _ConfigFile | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read credentials file {path}: {exc.strerror}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise UsageError(
                f"credentials file {path} is not valid JSON (line {exc.lineno}); fix or remove it"
            ) from None
        if not isinstance(document, dict):
            raise UsageError(f"credentials file {path} is not a JSON object; fix or remove it")
        auths = document.get("auths") or {}
        helpers = document.get("credHelpers") or {}
        store = document.get("credsStore") or None
        if not isinstance(auths, dict) or not isinstance(helpers, dict):
            raise UsageError(
                f"credentials file {path}: 'auths' and 'credHelpers' must be objects; fix them"
            )
        return cls(
            path=path,
            auths={
                normalise_host(key): _credential_from_auths_entry(entry, path, key)
                for key, entry in auths.items()
            },
            cred_helpers={normalise_host(key): str(name) for key, name in helpers.items()},
            creds_store=str(store) if store else None,
        )

    def lookup(self, host: str) -> Credential | None:
        """credHelpers beats a stored `auths` entry, which beats the default credsStore."""
        helper = self.cred_helpers.get(host)
        if helper:
            return _run_helper(helper, host)
        stored = self.auths.get(host)
        if stored is not None:
            return stored
        if self.creds_store:
            return _run_helper(self.creds_store, host)
        return None


class CredentialStore:
    """Finds the credential for a registry host; each host is resolved (and helpers run) once."""

    def __init__(self, explicit: Mapping[str, Credential], files: list[_ConfigFile]) -> None:
        self._explicit = {normalise_host(host): cred for host, cred in explicit.items()}
        self._files = files
        self._cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        explicit: dict[str, Credential] | None = None,
        environ: Mapping[str, str] = os.environ,
        home: Path | None = None,
    ) -> CredentialStore:
        """Explicit credentials first, then $REGISTRY_AUTH_FILE, then Docker's config.json."""
        paths: list[Path] = []
        if environ.get("REGISTRY_AUTH_FILE"):
            paths.append(Path(environ["REGISTRY_AUTH_FILE"]))
        if environ.get("DOCKER_CONFIG"):
            paths.append(Path(environ["DOCKER_CONFIG"]) / "config.json")
        else:
            paths.append((home if home is not None else Path.home()) / ".docker" / "config.json")
        files = [parsed for parsed in map(_ConfigFile.read, paths) if parsed is not None]
        return cls(explicit or {}, files)

    @classmethod
    def empty(cls) -> CredentialStore:
        """A store that knows no credentials: every registry is accessed anonymously."""
        return cls({}, [])

    def for_host(self, host: str) -> Credential | None:
        """The credential for "host[:port]" as written in a URL, or None."""
        key = normalise_host(host)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._resolve(key)
            return self._cache[key]

    def _resolve(self, key: str) -> Credential | None:
        if key in self._explicit:
            return self._explicit[key]
        for config in self._files:
            found = config.lookup(key)
            if found is not None:
                return found
        return None
