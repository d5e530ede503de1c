"""Registry credentials from the command line and the auth files podman, skopeo and Docker keep.

Files are read in the order containers-auth.json(5) gives (docker's config.json after them),
and an entry may name a whole host or one namespace or repository on it (most specific wins),
so each host, and each repository where the user split them, only ever gets its own secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occystrap.errors import UsageError
from occystrap.jsondoc import BadJSONError, parse_json
from occystrap.registry.hosts import DOCKER_HUB_ALIASES

logger = logging.getLogger(__name__)

# Docker keeps Hub credentials under this historical key whatever name the user typed.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT_SECONDS = 60
# A credential helper's Username meaning "Secret is an identity (refresh) token".
_IDENTITY_TOKEN_USERNAME = "<token>"
# What docker-credential-* helpers print when they simply hold nothing for a host.
_HELPER_NOT_FOUND = "credentials not found"
# The pre-2015 Docker file: the `auths` object itself, at the top level.
LEGACY_FILE_NAME = ".dockercfg"

# An `auths` key reduced to (host, repository path); the path is "" for a host-wide entry.
AuthKey = tuple[str, str]


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
    return parse_auth_key(key)[0]


def parse_auth_key(key: str) -> AuthKey:
    """(host, path) from an `auths` key: "host[:port]", "host/namespace[/repo]", or a URL.

    URL keys ("https://host/v1/", written by old Docker versions) are host-wide whatever their
    path, as in containers-auth.json(5); a plain key's path scopes it to that namespace.
    """
    text = key.strip()
    is_url = "://" in text
    if is_url:
        text = text.split("://", 1)[1]
    host, _, path = text.partition("/")
    host = host.lower()
    if host in DOCKER_HUB_ALIASES:
        host = DOCKER_HUB_KEY
    return host, "" if is_url else path.strip("/")


def _keys_most_specific_first(host: str, repository: str) -> list[AuthKey]:
    """For "a/b/c": (host, "a/b/c"), (host, "a/b"), (host, "a"), (host, "")."""
    parts = [part for part in repository.split("/") if part]
    return [(host, "/".join(parts[:length])) for length in range(len(parts), -1, -1)]


def auth_files_for_reading(
    authfile: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
) -> list[Path]:
    """The files searched for credentials, first match wins (containers-auth.json(5)).

    `--authfile` (or $REGISTRY_AUTH_FILE) replaces the whole list, as in podman and skopeo.
    Otherwise: the primary ${XDG_RUNTIME_DIR}/containers/auth.json (/run/containers/UID/auth.json
    without it), ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json, docker's config.json
    ($DOCKER_CONFIG/config.json or ~/.docker/config.json), then the legacy ~/.dockercfg.
    """
    override = authfile or (
        Path(environ["REGISTRY_AUTH_FILE"]) if environ.get("REGISTRY_AUTH_FILE") else None
    )
    if override is not None:
        return [override]
    home = home if home is not None else Path.home()
    if environ.get("XDG_RUNTIME_DIR"):
        primary = Path(environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    else:
        primary = Path(f"/run/containers/{os.getuid()}/auth.json")
    config_home = (
        Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else home / ".config"
    )
    return [
        primary,
        config_home / "containers" / "auth.json",
        docker_config_path(environ, home),
        home / LEGACY_FILE_NAME,
    ]


def docker_config_path(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Path:
    """$DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"]) / "config.json"
    return (home if home is not None else Path.home()) / ".docker" / "config.json"


def auth_file_for_writing(
    authfile: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
) -> Path:
    """Where `login`/`logout` write: --authfile, else $REGISTRY_AUTH_FILE, else docker's
    config.json (which podman, skopeo and docker all read)."""
    if authfile is not None:
        return authfile
    if environ.get("REGISTRY_AUTH_FILE"):
        return Path(environ["REGISTRY_AUTH_FILE"])
    return docker_config_path(environ, home)


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


def _read_document(path: Path) -> dict[str, Any] | None:
    """A credentials file's JSON object; None when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read credentials file {path}: {exc.strerror}") from None
    try:
        document = parse_json(text, f"credentials file {path}") if text.strip() else {}
    except BadJSONError as exc:
        raise UsageError(f"{exc}; fix or remove it") from None
    if not isinstance(document, dict):
        raise UsageError(f"credentials file {path} is not a JSON object; fix or remove it")
    return document


# Runs `docker-credential-NAME get` for (helper name, host, file naming the helper).
HelperRunner = Callable[[str, str, Path], "Credential | None"]


@dataclass
class _ConfigFile:
    """One parsed config file: which helper or stored credential serves each host."""

    path: Path
    auths: dict[AuthKey, Credential | None]
    cred_helpers: dict[str, str]
    creds_store: str | None

    @classmethod
    def read(cls, path: Path) -> _ConfigFile | None:
        document = _read_document(path)
        if document is None:
            return None
        legacy = path.name == LEGACY_FILE_NAME
        auths = document if legacy else document.get("auths") or {}
        helpers = {} if legacy else document.get("credHelpers") or {}
        store = None if legacy else document.get("credsStore") or None
        if not isinstance(auths, dict) or not isinstance(helpers, dict):
            raise UsageError(
                f"credentials file {path}: 'auths' and 'credHelpers' must be objects; fix them"
            )
        parsed: dict[AuthKey, Credential | None] = {}
        # A plain "host" key beats an old-style "https://host/v1/" one for the same host.
        for key in sorted(auths, key=lambda key: "://" not in key):
            parsed[parse_auth_key(key)] = _credential_from_auths_entry(auths[key], path, key)
        return cls(
            path=path,
            auths=parsed,
            cred_helpers={normalise_host(key): str(name) for key, name in helpers.items()},
            creds_store=str(store) if store else None,
        )

    def lookup(self, host: str, repository: str, run_helper: HelperRunner) -> Credential | None:
        """credHelpers beats stored `auths` entries (most specific first), then credsStore."""
        helper = self.cred_helpers.get(host)
        if helper:
            return run_helper(helper, host, self.path)
        for key in _keys_most_specific_first(host, repository):
            stored = self.auths.get(key)
            if stored is not None:
                return stored
        if self.creds_store:
            return run_helper(self.creds_store, host, self.path)
        return None


class CredentialStore:
    """Finds the credential for a registry host (and repository); each is resolved once, each
    credential helper asked once per host, and a broken helper reported once."""

    def __init__(self, explicit: Mapping[str, Credential], files: list[_ConfigFile]) -> None:
        """`explicit` keys are auths-style: "host[:port]" or "host/namespace[/repo]"."""
        self._explicit = {parse_auth_key(key): cred for key, cred in explicit.items()}
        self._files = files
        self._cache: dict[AuthKey, Credential | None] = {}
        self._helper_answers: dict[tuple[str, str], Credential | None] = {}
        self._helpers_warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        explicit: Mapping[str, Credential] | None = None,
        environ: Mapping[str, str] = os.environ,
        home: Path | None = None,
        authfile: Path | None = None,
    ) -> CredentialStore:
        """Explicit credentials first, then the auth files in `auth_files_for_reading` order."""
        paths = auth_files_for_reading(authfile, environ, home)
        files = [parsed for parsed in map(_ConfigFile.read, paths) if parsed is not None]
        if (authfile or environ.get("REGISTRY_AUTH_FILE")) and not files:
            logger.info("auth file %s does not exist: no stored credentials are used", paths[0])
        return cls(explicit or {}, files)

    @classmethod
    def empty(cls) -> CredentialStore:
        """A store that knows no credentials: every registry is accessed anonymously."""
        return cls({}, [])

    def for_host(self, host: str, repository: str = "") -> Credential | None:
        """The credential for "host[:port]" as written in a URL (and, when known, the
        repository the request is for), or None."""
        host = normalise_host(host)
        key = (host, repository.strip("/"))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._resolve(*key)
            return self._cache[key]

    def _resolve(self, host: str, repository: str) -> Credential | None:
        for key in _keys_most_specific_first(host, repository):
            if key in self._explicit:
                return self._explicit[key]
        for config in self._files:
            found = config.lookup(host, repository, self._run_helper)
            if found is not None:
                return found
        return None

    def _run_helper(self, name: str, host: str, named_in: Path) -> Credential | None:
        """`docker-credential-NAME get` for `host`, answered once per (helper, host)."""
        if (name, host) not in self._helper_answers:
            self._helper_answers[(name, host)] = self._ask_helper(name, host, named_in)
        return self._helper_answers[(name, host)]

    def _ask_helper(self, name: str, host: str, named_in: Path) -> Credential | None:
        import subprocess  # helpers are rare: not loaded by every run

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
        except FileNotFoundError:
            self._warn_helper(
                name, f"{program}, named in {named_in}, is not installed (not on PATH)"
            )
            return None
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._warn_helper(name, f"{program}, named in {named_in}, failed: {type(exc).__name__}")
            return None
        if completed.returncode != 0:
            said = " ".join(f"{completed.stdout} {completed.stderr}".split())
            if _HELPER_NOT_FOUND in said.lower():
                logger.debug(
                    "credential helper %s has no credential for %s (exit %d)",
                    program,
                    host,
                    completed.returncode,
                )
            else:
                self._warn_helper(
                    name,
                    f"{program}, named in {named_in}, failed for {host} "
                    f"(exit {completed.returncode}): {said[:200]}",
                )
            return None
        try:
            answer = parse_json(completed.stdout)
            username = answer.get("Username") or None
            secret = answer.get("Secret") or None
        except (ValueError, AttributeError):
            self._warn_helper(name, f"{program} gave unreadable output for {host}")
            return None
        if not secret:
            logger.debug("credential helper %s returned an empty secret for %s", program, host)
            return None
        if username == _IDENTITY_TOKEN_USERNAME:
            return Credential(username=None, password=None, identity_token=secret)
        return Credential(username=username, password=secret)

    def _warn_helper(self, name: str, problem: str) -> None:
        """One warning per helper per run: the user sees it, and a pull of many layers does
        not repeat it."""
        if name in self._helpers_warned:
            return
        self._helpers_warned.add(name)
        logger.warning("credential helper %s; continuing without its credentials", problem)


# -- writing, for login and logout --------------------------------------------------------


def format_auth_key(key: AuthKey) -> str:
    """The `auths` key text podman and docker both read for a parsed (host, path)."""
    host, path = key
    if not path:
        return host
    return f"{'docker.io' if host == DOCKER_HUB_KEY else host}/{path}"


def _write_document(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` atomically with `document`, readable by its owner only."""
    from occystrap.atomic import atomic_path  # login and logout write; every command reads

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps(document, indent="\t") + "\n"
    try:
        with atomic_path(path) as temporary:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write credentials file {path}: {exc.strerror}") from None


def store_credential(path: Path, key: str, credential: Credential) -> str:
    """Save username/password for `key` ("host[:port]" or "host/namespace") in `path`,
    keeping every other entry; returns the `auths` key written."""
    if not (credential.username and credential.password):
        raise UsageError("a username and a password are both needed to log in")
    document = _read_document(path) or {}
    auths = document.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise UsageError(f"credentials file {path}: 'auths' must be an object; fix it")
    target = parse_auth_key(key)
    for existing in [name for name in auths if parse_auth_key(name) == target]:
        del auths[existing]
    written = format_auth_key(target)
    pair = f"{credential.username}:{credential.password}".encode()
    auths[written] = {"auth": base64.b64encode(pair).decode("ascii")}
    helpers = document.get("credHelpers") or {}
    for helper_host, helper in helpers.items() if isinstance(helpers, dict) else ():
        if normalise_host(helper_host) == target[0]:
            logger.warning(
                "%s names credential helper %s for %s; it is asked before the entry just written",
                path,
                helper,
                helper_host,
            )
    _write_document(path, document)
    return written


def remove_credential(path: Path, key: str) -> bool:
    """Remove every `auths` entry for `key` from `path`; False when there was none."""
    document = _read_document(path)
    auths = (document or {}).get("auths")
    if not isinstance(auths, dict):
        return False
    target = parse_auth_key(key)
    doomed = [name for name in auths if parse_auth_key(name) == target]
    if not doomed:
        return False
    for name in doomed:
        del auths[name]
    _write_document(path, document or {})
    return True
