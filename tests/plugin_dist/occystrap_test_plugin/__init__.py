"""A plug-in that stamps every request with a header, to prove discovery through an entry point."""

import httpx


class StampMiddleware(httpx.BaseTransport):
    """Adds `X-Occystrap-Stamp` (value from the `value` option) to each request."""

    def __init__(self, next_transport: httpx.BaseTransport, value: str) -> None:
        self.next = next_transport
        self.value = value

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["X-Occystrap-Stamp"] = self.value
        return self.next.handle_request(request)

    def close(self) -> None:
        self.next.close()


def stamp_middleware(
    next_transport: httpx.BaseTransport, options: dict[str, str]
) -> StampMiddleware:
    """Plug-in factory for `--middleware stamp[:value=TEXT]`."""
    return StampMiddleware(next_transport, options.get("value", "stamped"))
