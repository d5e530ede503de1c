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
    detail = _error_detail(response)
    advice = _ADVICE.get(response.status_code)
    if advice is None and response.status_code >= 500:
        advice = "the registry failed; try again later or raise --retries"
    message = f"{response.url.host} answered HTTP {response.status_code} for {what}"
    if detail:
        message += f" ({detail})"
    if advice:
        message += f"; {advice}"
    return RegistryError(message)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = b""
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        body = b""
    finally:
        response.close()
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return ""
    messages = []
    for error in errors[:3]:
        if isinstance(error, dict):
            code, message = error.get("code", ""), error.get("message", "")
            messages.append(" ".join(str(part) for part in (code, message) if part))
    return ", ".join(m for m in messages if m).replace("\n", " ")
