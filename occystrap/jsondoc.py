"""The one JSON parser for documents from outside: registries, token servers, the Quay API,
the Docker daemon, tarballs, layouts, directories and credentials files.

Python's parser recurses once per nesting level, so `'[' * 100000` ends in a RecursionError
(a traceback) instead of a message. No document occystrap reads nests anywhere near
`MAX_DEPTH` deep, so deeper nesting is refused before parsing, in one line.
"""

from __future__ import annotations

import json
import re
from typing import Any

from occystrap.errors import OccystrapError

# Manifests, configs, token answers and daemon JSON nest under ten levels.
MAX_DEPTH = 100


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class BadJSONError(OccystrapError, ValueError):
    """A document that is not JSON, or nests too deep; a ValueError as json's own errors are,
    so callers that already tell "not JSON" apart keep doing so."""


class TooDeepJSONError(BadJSONError):
    """A document nesting deeper than MAX_DEPTH."""


def nesting_depth_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in `text` nest deeper than `limit` (brackets inside strings
    do not count)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, without a scan
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _too_deep(what: str) -> str:
    return f"{what} is not valid JSON: it nests deeper than {MAX_DEPTH} levels"


def parse_json(data: bytes | bytearray | str, what: str = "the document") -> Any:
    """`json.loads` for untrusted input: any defect, nesting deeper than MAX_DEPTH included,
    raises a `BadJSONError` whose message names `what`."""
    try:
        text = (
            data
            if isinstance(data, str)
            else bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        )
    except UnicodeDecodeError:
        raise BadJSONError(f"{what} is not valid JSON (not UTF-8/16/32 text)") from None
    if nesting_depth_exceeds(text):
        raise TooDeepJSONError(_too_deep(what))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadJSONError(
            f"{what} is not valid JSON ({error.msg}, line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:  # a thread with little stack left: still one line
        raise TooDeepJSONError(_too_deep(what)) from None
