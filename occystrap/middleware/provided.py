"""Registry credentials supplied by a plug-in (a cloud's token service) instead of auth files.

A plug-in derived from `ProvidedCredentials` claims some registry hosts and fetches a
credential for each; it is cached until shortly before it expires, shared by every request
of the run, and attached to requests for that host as the `PROVIDED_CREDENTIAL` extension.
RegistryAuth, further down the chain, uses it exactly as it would a password from an auth
file (Basic, or the token realm's Basic/refresh-token grant), and only for that host: a
mirror or a redirect target never sees it. A 401 that comes back up despite it fetches a
fresh credential once and replays the request.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from occystrap.credentials import Credential
from occystrap.middleware.base import Middleware
from occystrap.middleware.extensions import BUFFER, PROVIDED_CREDENTIAL, REPLAYABLE

# Stop using a credential this long before it expires (at most a quarter of its life).
EXPIRY_MARGIN_SECONDS = 300.0


@dataclass(frozen=True)
class HostCredential:
    """A credential and the one host ("host[:port]") it may be sent to."""

    host: str
    credential: Credential = field(repr=False)


def hosts_option(options: dict[str, str], also: tuple[str, ...] = ()) -> frozenset[str]:
    """The `hosts=HOST;HOST` option every credential plug-in takes (registries under names
    its cloud's pattern does not match), refusing options it does not know."""
    unknown = sorted(set(options) - {"hosts", *also})
    if unknown:
        known = ", ".join(f"{key}=" for key in ("hosts", *also))
        raise ValueError(f"unknown option(s) {', '.join(unknown)}: expected {known}")
    return frozenset(host for host in options.get("hosts", "").split(";") if host)


def send_small(
    transport: httpx.BaseTransport, request: httpx.Request, limit: int = 1024 * 1024
) -> httpx.Response:
    """Send a token-service request down the chain and read its (small) answer whole,
    inside Retry's loop."""
    request.extensions = {**request.extensions, BUFFER: limit}
    response = transport.handle_request(request)
    try:
        response.read()
    finally:
        response.close()
    return response


def is_replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again (bytes, or a stream that re-opens)."""
    return isinstance(request.stream, httpx.ByteStream) or bool(request.extensions.get(REPLAYABLE))


def provided_credential(request: httpx.Request) -> Credential | None:
    """The credential a plug-in attached for this request's own host, else None."""
    provided = request.extensions.get(PROVIDED_CREDENTIAL)
    if isinstance(provided, HostCredential) and provided.host == request.url.netloc.decode():
        return provided.credential
    return None


@dataclass(frozen=True)
class _Cached:
    credential: Credential = field(repr=False)
    usable_until: float


class ProvidedCredentials(Middleware):
    """Base of credential plug-ins: subclasses say which hosts they serve and how to fetch."""

    def __init__(
        self, next_transport: httpx.BaseTransport, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(next_transport)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}

    @abstractmethod
    def claims(self, host: str) -> bool:
        """Whether this plug-in supplies the credential of registry `host` ("host[:port]")."""

    @abstractmethod
    def fetch(self, host: str, url: httpx.URL) -> tuple[Credential, float]:
        """A fresh credential for `host` (first needed by a request for `url`) and how many
        seconds it lives. Requests it makes itself go to `self.next`, the rest of the chain.
        Raise `OccystrapError` with one line naming the missing extra or setting when it
        cannot."""

    def credential(
        self, host: str, url: httpx.URL, rejected: Credential | None = None
    ) -> Credential:
        """The cached credential for `host`, fetched once however many threads ask; a
        `rejected` one is replaced."""
        with self._lock:
            fetch_lock = self._fetch_locks.setdefault(host, threading.Lock())
        with fetch_lock:
            with self._lock:
                cached = self._cache.get(host)
            if (
                cached is not None
                and cached.usable_until > self._clock()
                and cached.credential != rejected
            ):
                return cached.credential
            credential, lifetime = self.fetch(host, url)
            margin = min(EXPIRY_MARGIN_SECONDS, lifetime / 4)
            with self._lock:
                self._cache[host] = _Cached(credential, self._clock() + lifetime - margin)
            return credential

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        if not self.claims(host):
            return self.next.handle_request(request)
        credential = self.credential(host, request.url)
        response = self.next.handle_request(self._with(request, host, credential))
        if response.status_code != 401 or not is_replayable(request):
            return response
        response.close()
        fresh = self.credential(host, request.url, rejected=credential)
        return self.next.handle_request(self._with(request, host, fresh))

    @staticmethod
    def _with(request: httpx.Request, host: str, credential: Credential) -> httpx.Request:
        request.extensions = {
            **request.extensions,
            PROVIDED_CREDENTIAL: HostCredential(host, credential),
        }
        return request
