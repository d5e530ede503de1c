"""Retry transient failures with jittered exponential backoff, honouring Retry-After.

Only requests that are safe to send again are retried: idempotent methods (or a caller's
explicit RETRY_UNSAFE) whose body can be replayed. A consumed stream is never re-sent.

Bodies the caller wants in memory (the BUFFER extension: manifests, configs, tokens, API pages)
and every error body are read here, inside the loop, so a connection cut or stalled while the
body arrives is retried like one that failed before the headers. Layers stay streamed (their
resume with Range lives in registry/blobs.py). Every request has an overall deadline across
its attempts, so a server trickling a byte a second cannot hold a run forever.
"""

import logging
import math
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
from occystrap.middleware.defaults import DEFAULT_DEADLINE
from occystrap.middleware.extensions import (
    ATTEMPT,
    ATTEMPTS,
    BUFFER,
    NO_RETRY,
    REPLAYABLE,
    RETRY_UNSAFE,
)
from occystrap.middleware.logging import redact_url
from occystrap.middleware.transport import is_bulk_transfer
from occystrap.registry.errors import ERROR_BODY_LIMIT, host_port

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


class DeadlineExceeded(httpx.TimeoutException, OccystrapError):
    """A request (all its attempts) outlived --deadline. Still a TimeoutException, so a mirror
    that is too slow falls through to the origin; an OccystrapError, so it is not retried."""


class ResponseTooLarge(httpx.TransportError, OccystrapError):
    """A buffered body grew past its limit: a hostile or broken server, never worth a retry."""


class RetryBudget:
    """Retries a whole run may make (--retry-budget): when a registry keeps failing, the run
    stops retrying and fails fast instead of retrying every request of every image."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a retry budget is 0 or more, not {limit}")
        self.limit = limit
        self.spent = 0
        self._lock = threading.Lock()

    def spend(self) -> bool:
        """Take one retry; False when none is left."""
        with self._lock:
            if self.spent >= self.limit:
                return False
            self.spent += 1
            return True

    def charge(self, retries: int) -> None:
        """Count retries made elsewhere (a cluster's workers report theirs)."""
        with self._lock:
            self.spent += retries

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.spent >= self.limit


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
        deadline: float = DEFAULT_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
        budget: RetryBudget | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if not deadline > 0:
            raise ValueError(f"deadline must be positive, not {deadline}")
        super().__init__(next_transport)
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.deadline = deadline
        self._clock = clock
        self.budget = budget
        self._count_lock = threading.Lock()
        self.retries_made = 0  # across all requests and threads, for the run's summary

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        max_attempts = 1 + self.retries if _may_resend(request) else 1
        # A layer may rightly take longer than any deadline; it is guarded by its progress
        # (registry/blobs.py) and by upload restarts instead.
        deadline = math.inf if is_bulk_transfer(request) else self._clock() + self.deadline
        attempt = 1
        while True:
            request.extensions[ATTEMPT] = attempt
            is_last = attempt >= max_attempts
            try:
                response = self._buffered(request, self.next.handle_request(request), deadline)
            except RETRYABLE_ERRORS as exc:
                # An OccystrapError (an untrusted certificate, the deadline) needs the user,
                # not another try.
                if isinstance(exc, OccystrapError):
                    raise
                delay = self._backoff(attempt)
                if is_last or self._clock() + delay >= deadline or not self._spend():
                    raise
                failure = type(exc).__name__
            else:
                if is_last or response.status_code not in RETRYABLE_STATUSES:
                    response.extensions[ATTEMPTS] = attempt
                    return response
                delay = self._delay_after(response, attempt)
                if self._clock() + delay >= deadline or not self._spend():
                    response.extensions[ATTEMPTS] = attempt
                    return response
                failure = f"status {response.status_code}"
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

    def _buffered(
        self, request: httpx.Request, response: httpx.Response, deadline: float
    ) -> httpx.Response:
        """The response with its body read into memory when the caller asked (BUFFER) or it is
        an error answer (at most ERROR_BODY_LIMIT of it); otherwise left streaming."""
        limit: int | None = request.extensions.get(BUFFER)
        is_error = response.status_code >= 400
        if is_error:
            cap = ERROR_BODY_LIMIT
        elif limit is not None:
            cap = limit
        else:
            return response
        body = bytearray()
        try:
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > cap and not is_error:
                    raise ResponseTooLarge(
                        f"{host_port(request.url)} sent more than {cap} bytes for"
                        f" {request.method} {redact_url(request.url)}; refusing it",
                        request=request,
                    )
                if len(body) >= cap:
                    break  # the start of an error answer is all anyone reads
                if self._clock() > deadline:
                    raise DeadlineExceeded(
                        f"{host_port(request.url)} did not deliver {request.method}"
                        f" {redact_url(request.url)} within {self.deadline:g} s"
                        " (it sends too slowly); raise --deadline or try again later",
                        request=request,
                    )
        finally:
            response.close()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(bytes(body[:cap])),
            extensions=response.extensions,
        )

    def take_retry(self) -> bool:
        """One retry made above this middleware (a blob upload restarted in a new session):
        drawn on the run's budget and counted as the chain's own are; False when the budget
        is spent."""
        if not self._spend():
            return False
        with self._count_lock:
            self.retries_made += 1
        return True

    def _spend(self) -> bool:
        """Whether the run's retry budget (if any) allows one more retry; takes it."""
        return self.budget is None or self.budget.spend()

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
