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


def registry_error(response: httpx.Response, what: str) -> RegistryError:
    """A RegistryError naming the registry, the thing asked for, the status and what to do.

    Reads at most a small part of the body (OCI error JSON), and closes the response.
    """
    errors = _errors(error_body(response))
    advice = _ADVICE.get(response.status_code)
    if advice is None and response.status_code >= 500:
        advice = "the registry failed; try again later or raise --retries"
    message = f"{response.url.host} answered HTTP {response.status_code} for {what}"
    detail = _error_detail(errors)
    if detail:
        message += f" ({detail})"
    if advice:
        message += f"; {advice}"
    codes = tuple(str(error.get("code", "")) for error in errors)
    return RegistryError(message, status=response.status_code, codes=codes, advice=advice)


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


def _errors(body: bytes) -> list[dict]:
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return []
    return (
        [error for error in errors if isinstance(error, dict)] if isinstance(errors, list) else []
    )


def _error_detail(errors: list[dict]) -> str:
    messages = []
    for error in errors[:3]:
        code, message = error.get("code", ""), error.get("message", "")
        messages.append(" ".join(str(part) for part in (code, message) if part))
    return ", ".join(m for m in messages if m).replace("\n", " ")
