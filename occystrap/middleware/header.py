"""The shipped `header` plug-in: add fixed request headers, e.g. for a pull-through cache."""

import re

import httpx

from occystrap.middleware.base import Middleware

# RFC 9110 token characters.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")


class HeaderMiddleware(Middleware):
    """Set the same headers on every request passing through."""

    def __init__(self, next_transport: httpx.BaseTransport, headers: dict[str, str]) -> None:
        super().__init__(next_transport)
        self.headers = dict(headers)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers.update(self.headers)
        return self.next.handle_request(request)


def header_middleware(
    next_transport: httpx.BaseTransport, options: dict[str, str]
) -> HeaderMiddleware:
    """Plug-in factory: each option `NAME=VALUE` becomes a request header."""
    if not options:
        raise ValueError("header needs NAME=VALUE, e.g. header:X-Pull-Through=yes")
    for name, value in options.items():
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if _BAD_VALUE_CHARS.search(value):
            raise ValueError(f"header {name!r} value contains a line break or NUL")
    return HeaderMiddleware(next_transport, options)
