"""A Docker Engine API daemon behind a Unix socket: its own small httpx client (the Logging
middleware over `httpx.HTTPTransport(uds=...)`; no registry auth, mirrors, retries or rate
limits apply), its checks, and its answers turned into one-line errors."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from occystrap.daemon.sockets import HOW_TO_NAME, DaemonSocket
from occystrap.errors import OccystrapError, find_cause
from occystrap.jsondoc import parse_json
from occystrap.limits import ERROR_BODY_LIMIT
from occystrap.middleware.builder import USER_AGENT
from occystrap.middleware.logging import Logging

LOG = logging.getLogger("occystrap.docker")

# The daemon answers a load only once it has read the whole tarball and registers layers
# meanwhile, so reads may wait long; connecting to a local socket must not.
DAEMON_TIMEOUT = httpx.Timeout(connect=15.0, read=600.0, write=600.0, pool=60.0)
PING_TIMEOUT = 15.0  # a daemon that cannot answer this is not worth waiting for


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Daemon:
    """A Docker Engine API daemon behind a Unix socket; every failure is a one-line error."""

    def __init__(self, socket: DaemonSocket) -> None:
        self.socket = socket

    def _where(self) -> str:
        origin = "" if self.socket.origin == "the default" else f" (from {self.socket.origin})"
        return f"{self.socket}{origin}"

    def _transport_error(self, error: httpx.TransportError, answered: bool) -> OccystrapError:
        """The one-line error for a failed exchange; `answered`: the daemon had answered as a
        Docker Engine API, so a cut now means it went away (killed, restarted), not that
        the socket is something else."""
        if answered and not isinstance(error, httpx.TimeoutException):
            why = _one_line(str(error)) or type(error).__name__
            return OccystrapError(
                f"the daemon at {self._where()} went away mid-transfer ({why}): check that it"
                " is running (its log may say why it stopped) and try again"
            )
        cause = find_cause(error, OSError)
        code = cause.errno if cause is not None else None
        if code == errno.ENOENT:
            return OccystrapError(
                f"no daemon socket at {self._where()}: start Docker (or `podman system"
                f" service`), or {HOW_TO_NAME}"
            )
        if code in (errno.EACCES, errno.EPERM):
            return OccystrapError(
                f"permission denied on the daemon socket {self._where()}: run as root or as a"
                " member of the socket's group (docker), or name a socket you may use"
            )
        if code in (errno.ECONNREFUSED, errno.ENOTSOCK):
            return OccystrapError(
                f"nothing answers on {self._where()}: the daemon is not running there; start"
                f" it, or {HOW_TO_NAME}"
            )
        if isinstance(error, httpx.TimeoutException):
            return OccystrapError(
                f"the daemon at {self._where()} did not answer in time"
                f" ({type(error).__name__}); check that it is healthy and try again"
            )
        if isinstance(error, httpx.ProtocolError):
            return self._not_docker(f"it does not answer HTTP: {type(error).__name__}")
        return OccystrapError(
            f"lost the daemon at {self._where()}: {_one_line(str(error)) or type(error).__name__};"
            " check that it is running and try again"
        )

    def _not_docker(self, why: str) -> OccystrapError:
        return OccystrapError(
            f"{self._where()} is not a Docker Engine API socket ({why}): point ?socket= or"
            " DOCKER_HOST at Docker's or Podman's API socket"
        )

    def error(self, response: httpx.Response, doing: str) -> OccystrapError:
        """The daemon's refusal, with its JSON `message` (read from a streamed response too)."""
        body = b""
        for chunk in response.iter_bytes():  # unlike iter_raw, also after a whole read
            body += chunk
            if len(body) > ERROR_BODY_LIMIT:
                break
        try:
            message = parse_json(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if not isinstance(message, str):
            message = body[:300].decode(errors="replace") or f"HTTP {response.status_code}"
        return OccystrapError(
            f"the daemon at {self.socket} failed to {doing}: {_one_line(message)}"
        )

    @contextmanager
    def session(self) -> Iterator[httpx.Client]:
        """A client on the socket, its API checked; transport failures become one-line errors."""
        # A Unix socket: no TLS context (httpx would load certifi's for nothing) and no
        # environment proxies.
        transport = Logging(httpx.HTTPTransport(uds=str(self.socket.path), verify=False))
        client = httpx.Client(
            transport=transport,
            base_url="http://docker",
            headers={"User-Agent": USER_AGENT},
            timeout=DAEMON_TIMEOUT,
            trust_env=False,
        )
        answered = False
        try:
            with client:
                self._check(client)
                answered = True
                yield client
        except httpx.TransportError as error:
            raise self._transport_error(error, answered) from None

    def _check(self, client: httpx.Client) -> None:
        response = client.get("/_ping", timeout=PING_TIMEOUT)
        version = response.headers.get("Api-Version")
        if response.status_code != 200 or not version:
            raise self._not_docker(
                f"/_ping answered HTTP {response.status_code}"
                + ("" if version else " without an Api-Version header")
            )
        LOG.debug(
            "daemon at %s: %s, API %s",
            self.socket,
            response.headers.get("Server", "unknown server"),
            version,
        )

    def inspect(self, client: httpx.Client, name: str) -> dict[str, Any] | None:
        """`GET /images/NAME/json`: the image's description, None when there is no such image."""
        response = client.get(f"/images/{name}/json")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.error(response, f"describe {name}")
        try:
            document = parse_json(response.content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise self._not_docker(f"/images/{name}/json is not a JSON object")
        return document


def load_error(lines: Iterable[str]) -> str | None:
    """The error (on one line) among a load's JSON lines of progress and "Loaded image"."""
    for line in lines:
        try:
            message = parse_json(line) if line.strip() else None
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        detail = message.get("errorDetail")
        error = message.get("error") or (
            detail.get("message") if isinstance(detail, dict) else detail
        )
        if error:
            return _one_line(str(error))
        LOG.debug("daemon: %s", _one_line(str(message.get("stream") or message)))
    return None
