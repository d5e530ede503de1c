"""Turning a registry's error answer into one line a user can act on."""

from __future__ import annotations

import json

import httpx

from occystrap.errors import RegistryError

_ERROR_BODY_LIMIT = 64 * 1024

_ADVICE = {
    401: "check --username/--password (--src-creds/--dest-creds) or your login (--authfile)",
    403: "your credentials do not allow this; check the account's permissions",
    404: "check the repository name and tag",
    429: "the registry is rate limiting; lower --rate-limit or raise --retries",
}


def registry_error(response: httpx.Response, what: str, body: bytes | None = None) -> RegistryError:
    """A RegistryError naming the registry, the thing asked for, the status and what to do.

    Reads at most a small part of the body (OCI error JSON), and closes the response; a caller
    that already read it with `error_body` passes `body`.
    """
    detail = _error_detail(error_body(response) if body is None else body)
    advice = _ADVICE.get(response.status_code)
    if advice is None and response.status_code >= 500:
        advice = "the registry failed; try again later or raise --retries"
    message = f"{response.url.host} answered HTTP {response.status_code} for {what}"
    if detail:
        message += f" ({detail})"
    if advice:
        message += f"; {advice}"
    error = RegistryError(message)
    error.status_code = response.status_code
    return error


def error_body(response: httpx.Response) -> bytes:
    """The start of an error answer's body (enough for OCI error JSON); closes the response.

    Works on streamed responses and on ones the client already read (non-streaming calls).
    """
    try:
        return response.content[:_ERROR_BODY_LIMIT]
    except httpx.ResponseNotRead:
        pass
    body = b""
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    finally:
        response.close()
    return body


def error_codes(body: bytes) -> list[str]:
    """The `code` of each OCI error in an error body, e.g. ["UNSUPPORTED"]."""
    return [str(error.get("code", "")) for error in _errors(body)]


def _errors(body: bytes) -> list[dict]:
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return []
    return (
        [error for error in errors if isinstance(error, dict)] if isinstance(errors, list) else []
    )


def _error_detail(body: bytes) -> str:
    messages = []
    for error in _errors(body)[:3]:
        code, message = error.get("code", ""), error.get("message", "")
        messages.append(" ".join(str(part) for part in (code, message) if part))
    return ", ".join(m for m in messages if m).replace("\n", " ")
