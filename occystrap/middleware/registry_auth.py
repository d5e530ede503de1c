"""Docker Registry v2 authentication: Bearer tokens from the realm, or Basic, per host.

Credentials are chosen from the URL of each request, so a redirect hop or a mirror
never receives the origin's secrets. Tokens are cached per (realm, service, scopes)
and sent pre-emptively once a host has challenged us, so a pull costs one token
fetch per scope rather than one 401 round trip per request. Cached tokens belong to the host
(scheme, host, port) they were fetched for: a redirect target or mirror that names the same
realm gets its own token, fetched with its own credentials (or none).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from occystrap.credentials import Credential, CredentialStore
from occystrap.errors import RegistryError
from occystrap.jsondoc import parse_json
from occystrap.middleware.base import Middleware
from occystrap.middleware.challenge import Challenge, parse_challenges
from occystrap.middleware.extensions import BUFFER, NO_AUTH, REPLAYABLE, RETRY_UNSAFE, SCOPE
from occystrap.middleware.provided import is_replayable, provided_credential

logger = logging.getLogger(__name__)

_DEFAULT_EXPIRES_IN = 60
# A token answer is a small JSON document; an endless one must not grow memory.
TOKEN_RESPONSE_LIMIT = 1024 * 1024
# Stop using a token this long before the registry says it expires (never more than a quarter
# of its life), so a request in flight does not carry a token that just died.
_EXPIRY_MARGIN_SECONDS = 10
_REPOSITORY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs|tags|referrers)/")
_CATALOG_SCOPE = "registry:catalog:*"
_READ_METHODS = frozenset({"GET", "HEAD"})

Origin = tuple[str, str, int | None]
TokenKey = tuple[Origin, str, str, frozenset[str]]


def request_with_header(request: httpx.Request, name: str, value: str) -> httpx.Request:
    """A copy of `request` with one header set; the caller's request is never changed.

    Mutating the original would let our Authorization ride along when httpx builds a
    redirect from it.
    """
    headers = httpx.Headers(request.headers)
    headers[name] = value
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


def basic_authorization(credential: Credential) -> str | None:
    """The Basic header value for a username/password credential, else None."""
    if not (credential.username and credential.password):
        return None
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def normalise_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Merge scopes naming the same resource so they compare as sets of actions.

    "repository:a:push,pull" and "repository:a:pull" + "repository:a:push" become one
    canonical "repository:a:pull,push".
    """
    actions_by_resource: dict[str, set[str]] = {}
    for scope in scopes:
        resource, separator, actions = scope.strip().rpartition(":")
        if not separator or not resource:
            if scope.strip():
                actions_by_resource.setdefault(scope.strip(), set())
            continue
        actions_by_resource.setdefault(resource, set()).update(
            action for action in actions.split(",") if action
        )
    return frozenset(
        f"{resource}:{','.join(sorted(actions))}" if actions else resource
        for resource, actions in actions_by_resource.items()
    )


def _expand(scopes: frozenset[str]) -> set[tuple[str, str]]:
    """Scopes as (resource, action) pairs, for "does this token cover that" checks."""
    pairs: set[tuple[str, str]] = set()
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        pairs.update((resource, action) for action in actions.split(","))
    return pairs


def scopes_for_request(request: httpx.Request) -> frozenset[str]:
    """The token scopes a registry request needs, from its path, method and SCOPE extension."""
    path = request.url.path
    needed: list[str] = list(request.extensions.get(SCOPE) or [])
    match = _REPOSITORY_PATH.match(path)
    if match:
        actions = "pull" if request.method.upper() in _READ_METHODS else "pull,push"
        needed.append(f"repository:{match.group('name')}:{actions}")
    elif path in ("/v2", "/v2/", "/v2/_catalog"):
        needed.append(_CATALOG_SCOPE)
    return normalise_scopes(needed)


def repository_of(url: httpx.URL) -> str:
    """The repository a registry request is for ("" for /v2/, the catalog, or other hosts'
    paths), so credentials scoped to one repository go to that repository only."""
    match = _REPOSITORY_PATH.match(url.path)
    return match.group("name") if match else ""


def _credential_for(store: CredentialStore, request: httpx.Request) -> Credential | None:
    """A plug-in's credential for this very host (see `provided`), else the store's."""
    provided = provided_credential(request)
    if provided is not None:
        return provided
    return store.for_host(request.url.netloc.decode("ascii"), repository_of(request.url))


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port)


@dataclass(frozen=True)
class _BearerRealm:
    """Where a host told us to get tokens (and, in its last challenge, for what)."""

    realm: str
    service: str
    challenge_scope: str = field(default="", compare=False)


@dataclass(frozen=True)
class _BasicScheme:
    """A host that asked for Basic credentials."""


@dataclass(frozen=True)
class _CachedToken:
    token: str
    usable_until: float


class RegistryAuth(Middleware):
    """Answers registry 401 challenges and then authenticates pre-emptively, per host."""

    def __init__(
        self,
        next_transport: httpx.BaseTransport,
        credentials: CredentialStore,
        clock: Callable[[], float] = time.monotonic,
        client_id: str = "occystrap",
    ) -> None:
        super().__init__(next_transport)
        self._credentials = credentials
        self._clock = clock
        self._client_id = client_id
        self._lock = threading.Lock()
        self._bearer_hosts: dict[Origin, _BearerRealm] = {}
        self._basic_hosts: set[Origin] = set()
        self._tokens: dict[TokenKey, _CachedToken] = {}
        self._fetch_locks: dict[TokenKey, threading.Lock] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "authorization" in request.headers or request.extensions.get(NO_AUTH):
            return self.next.handle_request(request)  # authenticated by the caller, or a probe
        origin = _origin(request.url)
        scopes = scopes_for_request(request)
        sent_token, sent_basic = None, False
        with self._lock:
            bearer = self._bearer_hosts.get(origin)
            uses_basic = origin in self._basic_hosts
        outgoing = request
        if bearer is not None and scopes:
            sent_token = self._token(bearer, scopes, request)
            outgoing = request_with_header(request, "Authorization", f"Bearer {sent_token}")
        elif uses_basic:
            basic = self._basic_for(request)
            if basic:
                outgoing = request_with_header(request, "Authorization", basic)
                sent_basic = True

        response = self.next.handle_request(outgoing)
        if response.status_code != 401:
            return response
        challenges = parse_challenges(", ".join(response.headers.get_list("www-authenticate")))
        retry_with = self._learn_challenge(challenges, origin)
        if retry_with is None or not is_replayable(request):
            return response
        if isinstance(retry_with, _BearerRealm):
            wanted = normalise_scopes([*retry_with.challenge_scope.split(" "), *scopes])
            authorization = "Bearer " + self._token(retry_with, wanted, request, sent_token)
        elif sent_basic:  # the host already refused our Basic credential
            return response
        else:
            basic_header = self._basic_for(request)
            if basic_header is None:
                return response
            authorization = basic_header
        response.close()
        return self.next.handle_request(
            request_with_header(request, "Authorization", authorization)
        )

    def _learn_challenge(
        self, challenges: list[Challenge], origin: Origin
    ) -> _BearerRealm | _BasicScheme | None:
        """Remember how a host wants to be authenticated (so later requests go pre-emptively)."""
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                bearer = _BearerRealm(
                    challenge.params["realm"],
                    challenge.params.get("service", ""),
                    challenge.params.get("scope", ""),
                )
                with self._lock:
                    self._bearer_hosts[origin] = bearer
                return bearer
        if any(challenge.scheme == "basic" for challenge in challenges):
            with self._lock:
                self._basic_hosts.add(origin)
            return _BasicScheme()
        return None

    def _basic_for(self, request: httpx.Request) -> str | None:
        credential = _credential_for(self._credentials, request)
        return basic_authorization(credential) if credential else None

    def _token(
        self,
        bearer: _BearerRealm,
        scopes: frozenset[str],
        request: httpx.Request,
        rejected_token: str | None = None,
    ) -> str:
        """A cached token covering `scopes`, or a fresh one fetched once however many ask."""
        origin = _origin(request.url)
        key = (origin, bearer.realm, bearer.service, scopes)
        cached = self._cached_token(origin, bearer, scopes, rejected_token)
        if cached is not None:
            return cached
        with self._lock:
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:
            cached = self._cached_token(origin, bearer, scopes, rejected_token)
            if cached is not None:
                return cached
            token, expires_in = self._fetch_token(bearer, scopes, request)
            margin = min(_EXPIRY_MARGIN_SECONDS, expires_in / 4)
            with self._lock:
                self._tokens[key] = _CachedToken(token, self._clock() + expires_in - margin)
            return token

    def _cached_token(
        self,
        origin: Origin,
        bearer: _BearerRealm,
        scopes: frozenset[str],
        rejected_token: str | None,
    ) -> str | None:
        """A live token fetched for this host from the same realm, covering every action."""
        needed = _expand(scopes)
        now = self._clock()
        with self._lock:
            for key, cached in list(self._tokens.items()):
                held_origin, realm, service, held = key
                if (held_origin, realm, service) != (origin, bearer.realm, bearer.service):
                    continue
                if cached.usable_until <= now:
                    del self._tokens[key]
                    continue
                if cached.token != rejected_token and needed <= _expand(held):
                    return cached.token
        return None

    def _fetch_token(
        self, bearer: _BearerRealm, scopes: frozenset[str], request: httpx.Request
    ) -> tuple[str, float]:
        """Ask the realm for a token with the registry host's credential (or anonymously)."""
        credential = _credential_for(self._credentials, request)
        realm_url = httpx.URL(bearer.realm)
        withheld = bool(credential) and realm_url.scheme == "http" and request.url.scheme == "https"
        if withheld:
            logger.debug("not sending credentials to plain-http realm %s", bearer.realm)
            credential = None
        sorted_scopes = sorted(scopes)
        extensions: dict[str, object] = {BUFFER: TOKEN_RESPONSE_LIMIT}
        if "timeout" in request.extensions:
            extensions["timeout"] = request.extensions["timeout"]
        if credential and credential.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credential.identity_token,
                "service": bearer.service,
                "scope": " ".join(sorted_scopes),
                "client_id": self._client_id,
            }
            token_request = httpx.Request(
                "POST",
                realm_url,
                data=form,
                extensions={**extensions, REPLAYABLE: True, RETRY_UNSAFE: True},
            )
        else:
            params: list[tuple[str, str | int | float | bool | None]] = (
                [("service", bearer.service)] if bearer.service else []
            )
            params += [("scope", scope) for scope in sorted_scopes]
            headers = {}
            basic = basic_authorization(credential) if credential else None
            if basic:
                headers["Authorization"] = basic
            token_request = httpx.Request(
                "GET",
                realm_url.copy_merge_params(params),
                headers=headers,
                extensions=extensions,
            )
        scope_text = " ".join(sorted_scopes) or "(no scope)"
        response = self.next.handle_request(token_request)  # read by Retry (BUFFER)
        try:
            response.read()
        finally:
            response.close()
        if response.status_code != 200:
            advice = (
                "your credentials were not sent, because the registry is HTTPS but its token"
                " service is plain HTTP, where they could be read; have the registry's token"
                " realm served over HTTPS"
                if withheld
                else "check --username/--password (--src-creds/--dest-creds) or your login"
            )
            raise RegistryError(
                f"could not get a token from {bearer.realm} for {scope_text}: "
                f"HTTP {response.status_code} {response.reason_phrase}; {advice}"
            )
        try:
            document = parse_json(response.content, "the token answer")
            token = document.get("token") or document.get("access_token")
            expires_in = float(document.get("expires_in") or _DEFAULT_EXPIRES_IN)
        except (ValueError, AttributeError, TypeError):
            token, expires_in = None, _DEFAULT_EXPIRES_IN
        if not token or not isinstance(token, str):
            raise RegistryError(
                f"the token endpoint {bearer.realm} gave no token for {scope_text}; "
                "check the registry's auth service"
            )
        if not math.isfinite(expires_in) or expires_in <= 0:
            expires_in = _DEFAULT_EXPIRES_IN
        logger.debug(
            "fetched token for %s scope %s, expires in %d s", bearer.realm, scope_text, expires_in
        )
        return token, expires_in
