"""Turning a registry's error answer into one line a user can act on."""

from __future__ import annotations

import socket
import ssl
from http import HTTPStatus

import httpx

from occystrap.errors import RegistryError, find_cause
from occystrap.jsondoc import parse_json
from occystrap.limits import ERROR_BODY_LIMIT

# Plain-text bodies (a proxy's or web server's own answer) shown at most this long.
_TEXT_DETAIL_LIMIT = 200
# What Go's HTTP server (the CNCF registry, Harbor, ...) answers to plain HTTP on a TLS port.
_PLAIN_HTTP_TO_TLS = "HTTP request to an HTTPS server"

NOT_FOUND = "not found"  # a failure_reason: the registry answered 404

_ADVICE = {
    401: "check --username/--password (--src-creds/--dest-creds) or your login (--authfile)",
    403: "your credentials do not allow this; check the account's permissions",
    404: "check the repository name and tag",
    429: "the registry is rate limiting; lower --rate-limit or raise --retries",
}


def host_port(url: httpx.URL) -> str:
    """`host:port` of a URL, the port always shown, so a message names the exact endpoint."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{host}:{port}" if port else host


def registry_error(response: httpx.Response, what: str) -> RegistryError:
    """A RegistryError naming the registry, the thing asked for, the status and what to do.

    Works on a response already read (httpx's non-streaming calls, the chain's buffered reads)
    as well as on an unread stream, of which it reads at most a small part. Closes it.
    """
    body = error_body(response)
    where = host_port(response.url)
    if response.status_code == 400 and _PLAIN_HTTP_TO_TLS.encode() in body:
        return RegistryError(
            f"{where} speaks TLS (https) but was sent plain HTTP for {what}; drop --insecure",
            status=400,
            advice="drop --insecure",
        )
    detail = _error_detail(body)
    advice = _ADVICE.get(response.status_code)
    if advice is None and response.status_code >= 500:
        advice = "the registry failed; try again later or raise --retries"
    message = f"{where} answered HTTP {response.status_code} for {what}"
    if detail:
        message += f" ({detail})"
    if advice:
        message += f"; {advice}"
    return RegistryError(
        message, status=response.status_code, codes=_error_codes(body), advice=advice
    )


def error_body(response: httpx.Response) -> bytes:
    """Up to ERROR_BODY_LIMIT bytes of the body, whether or not it was read before; closes it."""
    try:
        return response.content[:ERROR_BODY_LIMIT]
    except httpx.ResponseNotRead:
        pass
    body = bytearray()
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # a body cut short or already streamed: the status alone still says enough
    finally:
        response.close()
    return bytes(body[:ERROR_BODY_LIMIT])


def _oci_errors(body: bytes) -> list[dict] | None:
    """The `errors` objects of an OCI error body; None when the body is not JSON."""
    try:
        document = parse_json(body)
    except ValueError:
        return None
    errors = document.get("errors") if isinstance(document, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_codes(body: bytes) -> tuple[str, ...]:
    return tuple(str(error.get("code", "")) for error in _oci_errors(body) or [])


def _error_detail(body: bytes) -> str:
    """The OCI error messages of the body, or a short plain-text body; "" if neither."""
    errors = _oci_errors(body)
    if errors is None:
        text = body.decode("utf-8", "replace").strip()
        if not text or text.startswith("<") or not text.isprintable():
            return ""
        return " ".join(text.split())[:_TEXT_DETAIL_LIMIT]
    messages = []
    for error in errors[:3]:
        code, message = error.get("code", ""), error.get("message", "")
        messages.append(" ".join(str(part) for part in (code, message) if part))
    return " ".join(", ".join(m for m in messages if m).split())


def network_error_message(exc: httpx.RequestError) -> str:
    """One line for a request that got no usable answer: the endpoint, what happened, what to do."""
    try:
        url: httpx.URL | None = exc.request.url
    except RuntimeError:  # raised outside a request
        url = None
    where = f" talking to {host_port(url)}" if url is not None else ""
    if isinstance(exc, httpx.TooManyRedirects):
        return (
            f"too many redirects{where} (a redirect loop?); check the registry address and any"
            " proxy or mirror in between"
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        # A redirect (or mirror) to file://, ftp:// ...: retrying cannot help.
        scheme = f"{url.scheme}://" if url is not None and url.scheme else "a non-HTTP URL"
        return (
            f"a redirect led to {scheme}, which is neither HTTP nor HTTPS; refusing to follow"
            " it (retrying cannot help): the registry or a proxy in between is misconfigured"
            " or hostile"
        )
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        advice = (
            "check the address and that the server is up; --insecure for plain-HTTP registries,"
            " raise --connect-timeout for slow links"
        )
    elif isinstance(exc, httpx.TimeoutException):
        advice = "the server went silent; raise --timeout or --retries, or try again later"
    elif isinstance(exc, httpx.RemoteProtocolError) and url is not None and url.scheme == "http":
        advice = "if it is a TLS (https) server, drop --insecure; else raise --retries"
    else:
        advice = "try again or raise --retries"
    detail = str(exc) or "no detail"
    return f"network error{where}: {type(exc).__name__}: {detail}; {advice}"


def failure_reason(error: BaseException) -> str:
    """A few words on why one registry of several gave no answer (a short name's search
    registries): the status it answered, how the connection failed, else the error's line."""
    status = error.status if isinstance(error, RegistryError) else None
    if status == 404:
        return NOT_FOUND
    if status is not None and (status in (401, 403, 429) or status >= 500):
        try:
            return f"{status} {HTTPStatus(status).phrase.lower()}"
        except ValueError:  # a status HTTP does not name
            return f"HTTP {status}"
    if isinstance(error, httpx.RequestError):
        if find_cause(error, ssl.SSLCertVerificationError) is not None:
            return "TLS certificate not trusted"
        if find_cause(error, ssl.SSLError) is not None:
            return "TLS error"
        if find_cause(error, socket.gaierror) is not None:
            return "host not found"
        if isinstance(error, httpx.ConnectTimeout):
            return "unreachable: connect timed out"
        if isinstance(error, httpx.ConnectError):
            return "unreachable"
        if isinstance(error, httpx.TimeoutException):
            return "timed out"
        return f"network error: {type(error).__name__}"
    return " ".join(str(error).split())
