"""One DEBUG line per network attempt, written when the response body is finished with.

Bodies stream, so the byte count and elapsed time are only known when the response
stream is closed; the line is emitted then. URLs are redacted and headers never logged,
so no credential can reach a log file.
"""

import logging
import time
from collections.abc import Callable, Iterator

import httpx

from occystrap.middleware.base import Middleware
from occystrap.middleware.extensions import ATTEMPT, MIRROR
from occystrap.redaction import redact_query

REDACTED = "REDACTED"


def redact_url(url: httpx.URL | str) -> str:
    """The URL fit for a log line: no userinfo, no fragment, secret query values replaced."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<unparseable URL>"
    path, _, query = parsed.raw_path.decode("ascii").partition("?")
    origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}" if parsed.scheme else ""
    return origin + path + (f"?{redact_query(query, REDACTED)}" if query else "")


class _CountingStream(httpx.SyncByteStream):
    """Passes the body through, counting bytes, and reports once when closed."""

    def __init__(
        self, inner: httpx.SyncByteStream, report: Callable[[int, str | None], None]
    ) -> None:
        self._inner = inner
        self._report = report
        self._byte_count = 0
        self._error: str | None = None
        self._reported = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._byte_count += len(chunk)
                yield chunk
        except Exception as exc:
            self._error = type(exc).__name__
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if not self._reported:
                self._reported = True
                self._report(self._byte_count, self._error)


class Logging(Middleware):
    """Logs every network attempt that passes through it (it sits innermost in the chain)."""

    def __init__(
        self, next_transport: httpx.BaseTransport, logger: logging.Logger | None = None
    ) -> None:
        super().__init__(next_transport)
        self.logger = logger or logging.getLogger("occystrap.http")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return self.next.handle_request(request)
        started = time.monotonic()
        target, context = _describe(request)
        try:
            response = self.next.handle_request(request)
        except Exception as exc:
            self.logger.debug(
                "%s -> %s after %.3fs, %s",
                target,
                type(exc).__name__,
                time.monotonic() - started,
                context,
            )
            raise

        def report(byte_count: int, error: str | None) -> None:
            self.logger.debug(
                "%s -> %d, %d bytes%s, %.3fs, %s",
                target,
                response.status_code,
                byte_count,
                f" then {error}" if error else "",
                time.monotonic() - started,
                context,
            )

        assert isinstance(response.stream, httpx.SyncByteStream)  # a sync transport's
        response.stream = _CountingStream(response.stream, report)
        return response


def _describe(request: httpx.Request) -> tuple[str, str]:
    """The request's redacted method and URL, and its attempt/mirror context."""
    context = f"attempt {request.extensions.get(ATTEMPT, 1)}"
    mirror = request.extensions.get(MIRROR)
    if mirror:
        context += f", mirror {redact_url(str(mirror))}"
    return f"{request.method} {redact_url(request.url)}", context
