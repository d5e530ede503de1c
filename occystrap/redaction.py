"""Which parts of a URL are secret, decided once for every place that shows one: URIs in
messages and errors (`endpoints.redact`) and URLs in log lines (`middleware.logging`)."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

# Query parameter names (lower case) whose value is a secret even though the name looks harmless.
_SECRET_PARAM_NAMES = frozenset({"sig", "key", "code", "pass"})
# Substrings of query parameter names (lower case) that mark a secret value.
_SECRET_PARAM_FRAGMENTS = ("token", "secret", "passw", "signature", "credential", "auth", "apikey")
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@?]*@", re.IGNORECASE)


def is_secret_param(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return lowered in _SECRET_PARAM_NAMES or any(
        fragment in lowered for fragment in _SECRET_PARAM_FRAGMENTS
    )


def redact_query(query: str, mask: str) -> str:
    """`query` (without its '?') with every secret parameter's value replaced by `mask`."""
    parts = []
    for pair in query.split("&"):
        name, separator, _value = pair.partition("=")
        parts.append(f"{name}={mask}" if separator and is_secret_param(name) else pair)
    return "&".join(parts)


def redact_text(text: str, mask: str) -> str:
    """A URL or URI as typed, with its userinfo and secret query values replaced by `mask`."""
    body, separator, query = _USERINFO.sub(rf"\g<1>{mask}@", text).partition("?")
    return body + (f"?{redact_query(query, mask)}" if separator else "")
