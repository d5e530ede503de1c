"""Parse `WWW-Authenticate` headers (RFC 7235) into challenges, leniently.

Registries send hand-written headers; a parser that raises on a stray quote would turn a
recoverable 401 into a crash, so garbage yields whatever could be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SEPARATORS = frozenset(' \t\r\n,="')


@dataclass(frozen=True)
class Challenge:
    """One auth scheme offered by a server, with its parameters (names lowercased)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] not in _SEPARATORS:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted string starting at the opening quote; an unterminated one runs to the end."""
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            chars.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(chars), pos + 1
        chars.append(char)
        pos += 1
    return "".join(chars), pos


def parse_challenges(header: str) -> list[Challenge]:
    """Split a header value into its challenges; several may share one header."""
    challenges: list[Challenge] = []
    current: Challenge | None = None
    just_saw_scheme = False
    pos = 0
    while pos < len(header):
        pos = _skip_whitespace(header, pos)
        if pos >= len(header):
            break
        char = header[pos]
        if char == ",":
            just_saw_scheme = False
            pos += 1
            continue
        if char == '"':  # a value with no name: skip it whole
            _, pos = _read_quoted(header, pos)
            continue
        if char == "=":
            pos += 1
            continue
        token, pos = _read_token(header, pos)
        after = _skip_whitespace(header, pos)
        if after < len(header) and header[after] == "=":
            pos = _skip_whitespace(header, after + 1)
            if pos < len(header) and header[pos] == '"':
                value, pos = _read_quoted(header, pos)
            else:
                value, pos = _read_token(header, pos)
                if not value:  # token68 padding such as "abc==": not a parameter
                    while pos < len(header) and header[pos] == "=":
                        pos += 1
                    continue
            if current is not None:
                current.params.setdefault(token.lower(), value)
            just_saw_scheme = False
        elif just_saw_scheme:  # token68 credentials after a scheme: nothing we use
            just_saw_scheme = False
        else:
            current = Challenge(scheme=token.lower(), params={})
            challenges.append(current)
            just_saw_scheme = True
    return challenges
