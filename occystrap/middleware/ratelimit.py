"""Client-side request rate limits, global and per host, shared by every thread.

Each limiter hands out send times spaced 1/R apart, so any one-second window holds at most
floor(R) + 1 requests. A caller reserves its slot under the lock and sleeps outside it, so
waiting on one limiter never blocks threads using another.
"""

import math
import threading
import time
from collections.abc import Callable, Iterable

import httpx

from occystrap.errors import UsageError
from occystrap.middleware.base import Middleware

# Slower than one request per 100 s would stall a run for hours; faster than a million per
# second is no limit at all. Outside these, a value is a typo, not a wish.
MIN_RATE = 0.01
MAX_RATE = 1_000_000.0
_EXPECTED_FORM = (
    f"expected R or HOST=R (comma-separated for several), R requests per second from {MIN_RATE}"
    f" to {MAX_RATE:.0f}, e.g. 10 or registry.example.com=5"
)


class RateLimiter:
    """Spaces acquisitions 1/rate seconds apart, across all threads."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, not {rate}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = -math.inf

    def acquire(self, on_wait: Callable[[float], None] | None = None) -> None:
        """Block until this caller's turn; turns are granted in the order they were asked for.
        `on_wait` hears how long the caller will wait, before it does (not when it need not)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        if on_wait is not None and slot > now:
            on_wait(slot - now)
        while (remaining := slot - self._clock()) > 0:
            self._sleep(remaining)


class RateLimitPolicy:
    """Which limiters apply to a host: the global one (if any) and the host's own."""

    def __init__(
        self,
        global_limiter: RateLimiter | None = None,
        per_host: dict[str, RateLimiter] | None = None,
    ) -> None:
        self.global_limiter = global_limiter
        self.per_host = {host.lower(): limiter for host, limiter in (per_host or {}).items()}

    def limiters_for(self, host: str) -> list[RateLimiter]:
        """Limiters for `host` ("name" or "name:port"); a bare-name limit covers every port."""
        host = host.lower()
        limiters = [self.global_limiter] if self.global_limiter else []
        for key in dict.fromkeys((host, _strip_port(host))):
            if key in self.per_host:
                limiters.append(self.per_host[key])
        return limiters


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def parse_rate_limits(values: Iterable[str]) -> RateLimitPolicy:
    """Build a policy from CLI/env values such as "10", "quay.io=5" or "10,localhost:5000=2".

    A later value for the same scope replaces an earlier one, so the CLI can override the env.
    """
    global_rate: float | None = None
    host_rates: dict[str, float] = {}
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            host, separator, rate_text = item.rpartition("=")
            rate = _parse_rate(rate_text, item)
            if not separator:
                global_rate = rate
            elif host.strip() and not any(char.isspace() for char in host.strip()):
                host_rates[host.strip().lower()] = rate
            else:
                raise UsageError(f"bad rate limit {item!r}: {_EXPECTED_FORM}")
    return RateLimitPolicy(
        RateLimiter(global_rate) if global_rate is not None else None,
        {host: RateLimiter(rate) for host, rate in host_rates.items()},
    )


def _parse_rate(text: str, item: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not MIN_RATE <= rate <= MAX_RATE:  # NaN fails too
        raise UsageError(f"bad rate limit {item!r}: {_EXPECTED_FORM}")
    return rate


class RateLimit(Middleware):
    """Waits for every applicable limiter before each request goes on down the chain.

    `on_wait(host, seconds)`, if given, is told (in the waiting thread) before each wait, so
    a display can show the request as held; the middleware knows nothing of displays.
    """

    def __init__(
        self,
        next_transport: httpx.BaseTransport,
        policy: RateLimitPolicy,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__(next_transport)
        self.policy = policy
        self.on_wait = on_wait

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = _host_and_port(request.url)
        on_wait = self.on_wait
        for limiter in self.policy.limiters_for(host):
            limiter.acquire(None if on_wait is None else lambda seconds: on_wait(host, seconds))
        return self.next.handle_request(request)


def _host_and_port(url: httpx.URL) -> str:
    """ "name:port" with the scheme's default port filled in, IPv6 names in brackets."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{host}:{port}" if port else host
