"""Retry transient failures with jittered exponential backoff, honouring Retry-After.

Only requests that are safe to send again are retried: idempotent methods (or a caller's
explicit RETRY_UNSAFE) whose body can be replayed. A consumed stream is never re-sent.
"""

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from occystrap.errors import OccystrapError
from occystrap.middleware.base import Middleware
from occystrap.middleware.extensions import ATTEMPT, ATTEMPTS, NO_RETRY, REPLAYABLE, RETRY_UNSAFE
from occystrap.middleware.logging import redact_url

logger = logging.getLogger("occystrap.retry")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Timeouts, connect/read/write failures and a server hanging up mid-response.
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter delay before retry `retry_number` (1-based).

    Uniform in [0, min(cap, base * 2**(n-1))], so many clients backing off do not retry in step.
    """
    try:
        ceiling = min(cap, base * 2.0 ** (retry_number - 1))
    except OverflowError:
        ceiling = cap
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if unparseable.

    `now` is a Unix timestamp; a date in the past means no wait (0), never a negative delay.
    """
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class Retry(Middleware):
    """Re-sends a failed request up to `retries` more times, sleeping between attempts."""

    def __init__(
        self,
        next_transport: httpx.BaseTransport,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        retry_after_cap: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        super().__init__(next_transport)
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._count_lock = threading.Lock()
        self.retries_made = 0  # across all requests and threads, for the run's summary

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        max_attempts = 1 + self.retries if _may_resend(request) else 1
        attempt = 1
        while True:
            request.extensions[ATTEMPT] = attempt
            is_last = attempt >= max_attempts
            try:
                response = self.next.handle_request(request)
            except RETRYABLE_ERRORS as exc:
                # An OccystrapError (an untrusted certificate) needs the user, not another try.
                if is_last or isinstance(exc, OccystrapError):
                    raise
                failure = type(exc).__name__
                delay = self._backoff(attempt)
            else:
                if is_last or response.status_code not in RETRYABLE_STATUSES:
                    response.extensions[ATTEMPTS] = attempt
                    return response
                failure = f"status {response.status_code}"
                delay = self._delay_after(response, attempt)
                response.close()
            logger.debug(
                "%s %s attempt %d failed with %s; retrying in %.2fs",
                request.method,
                redact_url(request.url),
                attempt,
                failure,
                delay,
            )
            with self._count_lock:
                self.retries_made += 1
            self._sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng)

    def _delay_after(self, response: httpx.Response, attempt: int) -> float:
        """The server's Retry-After (capped so a hostile value cannot stall us), else backoff."""
        header = response.headers.get("Retry-After")
        retry_after = parse_retry_after(header, time.time()) if header is not None else None
        if retry_after is None:
            return self._backoff(attempt)
        return min(retry_after, self.retry_after_cap)


def _may_resend(request: httpx.Request) -> bool:
    """Whether sending this request a second time is both safe and possible."""
    extensions = request.extensions
    if extensions.get(NO_RETRY):
        return False
    if request.method not in IDEMPOTENT_METHODS and not extensions.get(RETRY_UNSAFE):
        return False
    return isinstance(request.stream, httpx.ByteStream) or bool(extensions.get(REPLAYABLE))
