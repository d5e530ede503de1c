"""The middleware contract: a transport that sees one request and the rest of the chain."""

import httpx


class Middleware(httpx.BaseTransport):
    """An `httpx.BaseTransport` wrapping the next transport in the chain.

    Subclasses override `handle_request` and call `self.next.handle_request`
    zero or more times; they know nothing of the middlewares around them.
    """

    def __init__(self, next_transport: httpx.BaseTransport) -> None:
        self.next = next_transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.next.handle_request(request)

    def close(self) -> None:
        self.next.close()
