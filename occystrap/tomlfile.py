"""Reading the TOML files users configure occystrap with, every problem one line naming the
file and the line (tomllib for the syntax; the line of a key found again for the meaning)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from occystrap.errors import UsageError

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$|\s*\(at end of document\)$")


class ConfigFileError(UsageError):
    """A configuration file that cannot be used; the message starts with FILE:LINE."""


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The document at `path` and its text (for `line_of`); a syntax error is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigFileError(f"{path}: cannot read it: {reason}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        if match and match.group(1):
            line = match.group(1)
        else:
            line = str(max(1, text.count("\n") + (0 if text.endswith("\n") else 1)))
        reason = _TOML_POSITION.sub("", message)
        raise ConfigFileError(f"{path}:{line}: not valid TOML: {reason}") from None


def line_of(text: str, key: str, table: str | None = None, occurrence: int = 0) -> int:
    """The line (1-based) of `key = ...`, inside the `occurrence`-th `[table]` or `[[table]]`
    header when `table` is given; 1 when it cannot be told (a key in an inline table)."""
    lines = text.splitlines()
    start = 0
    if table is not None:
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        seen = -1
        for number, line in enumerate(lines):
            if header.match(line):
                seen += 1
                if seen == occurrence:
                    start = number
                    break
        else:
            return 1
        if not key:
            return start + 1
    pattern = re.compile(rf"""^\s*(?:"{re.escape(key)}"|'{re.escape(key)}'|{re.escape(key)})\s*=""")
    for number in range(start, len(lines)):
        if (table is None or number > start) and re.match(r"^\s*\[", lines[number]):
            break
        if pattern.match(lines[number]):
            return number + 1
    return start + 1
