"""Registry pull quotas as the registry states them (Docker Hub's `RateLimit-Limit` and
`RateLimit-Remaining: N;w=SECONDS`), read from every answer into a shared `QuotaBook`.

The middleware only observes; deciding to start no new image when a registry's remaining
pulls reach a floor is the caller's (`occystrap sync`), which then reports the rest deferred
until the window resets instead of running into 429s.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from occystrap.middleware.base import Middleware

_QUOTA = re.compile(r"\s*([0-9]+)\s*(?:;\s*w\s*=\s*([0-9]+))?")


@dataclass(frozen=True)
class QuotaReading:
    """One registry's quota as its last answer stated it; `seen` is a Unix time."""

    host: str
    remaining: int
    limit: int | None = None
    window: int | None = None  # seconds
    seen: float = 0.0

    @property
    def resets(self) -> float | None:
        """By when the window has passed (Unix time), if the registry said how long it is."""
        return None if self.window is None else self.seen + self.window


def parse_quota(value: str | None) -> tuple[int, int | None] | None:
    """`100;w=21600` -> (100, 21600); `100` -> (100, None); anything else -> None."""
    match = _QUOTA.match(value or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


def quota_of(host: str, headers: httpx.Headers, seen: float) -> QuotaReading | None:
    remaining = parse_quota(headers.get("RateLimit-Remaining"))
    if remaining is None:
        return None
    limit = parse_quota(headers.get("RateLimit-Limit"))
    window = remaining[1] or (limit[1] if limit else None)
    return QuotaReading(host, remaining[0], limit[0] if limit else None, window, seen)


def url_host(url: httpx.URL) -> str:
    """`host[:port]` as registry references spell it (the port only when the URL has one)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


class QuotaBook:
    """The latest quota reading of each registry host, shared by every thread (and, merged,
    by the machines of a cluster)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, QuotaReading] = {}
        self.clock = clock

    def record(self, reading: QuotaReading) -> None:
        with self._lock:
            known = self._readings.get(reading.host)
            if known is None or known.seen <= reading.seen:
                self._readings[reading.host] = reading

    def merge(self, readings: Iterable[QuotaReading]) -> None:
        for reading in readings:
            self.record(reading)

    def reading(self, host: str) -> QuotaReading | None:
        with self._lock:
            return self._readings.get(host)

    def readings(self) -> list[QuotaReading]:
        with self._lock:
            return list(self._readings.values())


class QuotaObserver(Middleware):
    """Records the quota headers of every answer (each attempt, 429s included)."""

    def __init__(self, next_transport: httpx.BaseTransport, book: QuotaBook) -> None:
        super().__init__(next_transport)
        self.book = book

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.next.handle_request(request)
        reading = quota_of(url_host(request.url), response.headers, self.book.clock())
        if reading is not None:
            self.book.record(reading)
        return response
