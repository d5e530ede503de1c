"""RateLimit: the per-second bound holds across threads and hosts, and limits parse strictly."""

import bisect
import math
import threading
import time

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import UsageError
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.middleware.ratelimit import (
    RateLimit,
    RateLimiter,
    RateLimitPolicy,
    parse_rate_limits,
)


def busiest_second(timestamps: list[float]) -> int:
    """The most timestamps falling in any half-open window [t, t + 1)."""
    ordered = sorted(timestamps)
    return max(
        (bisect.bisect_left(ordered, start + 1.0) - index for index, start in enumerate(ordered)),
        default=0,
    )


class SimulatedTime:
    """A clock that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_busiest_second_counts_half_open_windows():
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_second([]) == 0


def test_sequential_acquisitions_are_spaced_one_over_rate_apart():
    time_source = SimulatedTime()
    limiter = RateLimiter(4, clock=time_source.clock, sleep=time_source.sleep)
    grants = []
    for _ in range(9):
        limiter.acquire()
        grants.append(time_source.now)
    assert grants == pytest.approx([n * 0.25 for n in range(9)])


def test_an_idle_limiter_does_not_delay():
    time_source = SimulatedTime()
    limiter = RateLimiter(2, clock=time_source.clock, sleep=time_source.sleep)
    limiter.acquire()
    time_source.now = 100.0
    limiter.acquire()
    assert time_source.now == 100.0


@given(
    st.floats(min_value=0.1, max_value=500),
    st.lists(st.floats(min_value=0, max_value=30), min_size=1, max_size=200),
)
def test_limiter_never_exceeds_the_bound_for_any_arrivals(rate, arrivals):
    """Callers arriving at arbitrary times (concurrently: each sleeps on its own) stay in bound."""
    time_source = SimulatedTime()
    limiter = RateLimiter(rate, clock=time_source.clock, sleep=time_source.sleep)
    grants = []
    for arrival in sorted(arrivals):
        time_source.now = arrival  # each caller has its own timeline once it starts sleeping
        limiter.acquire()
        assert time_source.now >= arrival
        grants.append(time_source.now)
    assert busiest_second(grants) <= math.floor(rate) + 1


def test_threads_sharing_a_limit_stay_within_it():
    rate, threads, requests_per_thread = 20, 8, 5
    sent: list[float] = []
    sent_lock = threading.Lock()

    def record(request: httpx.Request) -> httpx.Response:
        with sent_lock:
            sent.append(time.monotonic())
        return httpx.Response(200)

    client = httpx.Client(transport=RateLimit(httpx.HTTPTransport(), parse_rate_limits(["20"])))

    def worker() -> None:
        for _ in range(requests_per_thread):
            client.get("https://registry.example/v2/")

    with respx.mock(using="httpcore") as mock:
        mock.get("https://registry.example/v2/").mock(side_effect=record)
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=10)
    total = threads * requests_per_thread
    assert len(sent) == total
    assert busiest_second(sent) <= rate + 1
    assert max(sent) - min(sent) >= (total - 1) / rate - 0.05


def test_a_host_limit_does_not_slow_another_host():
    slow_host_limiter = RateLimiter(1)
    policy = RateLimitPolicy(per_host={"slow.example": slow_host_limiter})
    client = httpx.Client(transport=RateLimit(httpx.HTTPTransport(), policy))
    with respx.mock(using="httpcore") as mock:
        mock.get(host="slow.example").mock(return_value=httpx.Response(200))
        mock.get(host="fast.example").mock(return_value=httpx.Response(200))
        client.get("https://slow.example/")  # takes the slow host's only slot this second
        waiting = threading.Thread(target=client.get, args=("https://slow.example/",))
        started = time.monotonic()
        waiting.start()
        time.sleep(0.05)
        for _ in range(10):
            client.get("https://fast.example/")
        fast_done = time.monotonic() - started
        waiting.join(timeout=5)
        slow_done = time.monotonic() - started
    assert fast_done < 0.5
    assert slow_done >= 0.8


def test_every_request_is_counted_by_its_hosts_limiters():
    time_source = SimulatedTime()

    def limiter(rate: float) -> RateLimiter:
        return RateLimiter(rate, clock=time_source.clock, sleep=time_source.sleep)

    policy = RateLimitPolicy(limiter(10), {"registry.example:5000": limiter(2)})
    client = httpx.Client(transport=RateLimit(httpx.HTTPTransport(), policy))
    with respx.mock(using="httpcore") as mock:
        mock.get(host="registry.example").mock(return_value=httpx.Response(200))
        mock.get(host="other.example").mock(return_value=httpx.Response(200))
        for _ in range(3):
            client.get("http://registry.example:5000/v2/")
        assert time_source.now == pytest.approx(1.0)  # the host's 2/s governs
        client.get("http://registry.example:5001/v2/")
        for _ in range(10):
            client.get("https://other.example/v2/")
        assert time_source.now == pytest.approx(2.0)  # the global 10/s governs


def test_parse_global_and_per_host_limits():
    policy = parse_rate_limits(["10", "Quay.IO=5,localhost:5000=2.5", " [::1]:5000 = 3 "])
    assert policy.global_limiter is not None and policy.global_limiter.rate == 10
    assert [lim.rate for lim in policy.limiters_for("quay.io:443")] == [10, 5]
    assert [lim.rate for lim in policy.limiters_for("QUAY.io")] == [10, 5]
    assert [lim.rate for lim in policy.limiters_for("localhost:5000")] == [10, 2.5]
    assert [lim.rate for lim in policy.limiters_for("localhost:5001")] == [10]
    assert [lim.rate for lim in policy.limiters_for("[::1]:5000")] == [10, 3]
    assert [lim.rate for lim in policy.limiters_for("docker.io:443")] == [10]


def test_later_values_override_earlier_ones():
    policy = parse_rate_limits(["5,quay.io=1", "7,quay.io=2"])
    assert [lim.rate for lim in policy.limiters_for("quay.io")] == [7, 2]


def test_no_values_means_no_limits():
    assert parse_rate_limits([]).limiters_for("quay.io") == []
    assert parse_rate_limits([""]).limiters_for("quay.io") == []


def test_a_limit_naming_a_default_port_applies_to_urls_without_one():
    time_source = SimulatedTime()
    limiter = RateLimiter(1, clock=time_source.clock, sleep=time_source.sleep)
    client = httpx.Client(
        transport=RateLimit(
            httpx.HTTPTransport(), RateLimitPolicy(per_host={"quay.io:443": limiter})
        )
    )
    with respx.mock(using="httpcore") as mock:
        mock.get(host="quay.io").mock(return_value=httpx.Response(200))
        client.get("https://quay.io/v2/")
        client.get("https://quay.io/v2/")
        assert time_source.now == pytest.approx(1.0)
        client.get("http://quay.io/v2/")
        assert time_source.now == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad", ["fast", "0", "-3", "nan", "inf", "=5", "quay.io=", "quay.io=x", "my host=2", "5,x=0"]
)
def test_bad_limits_are_usage_errors_naming_the_value(bad):
    with pytest.raises(UsageError) as caught:
        parse_rate_limits([bad])
    message = str(caught.value)
    assert "\n" not in message
    assert "HOST=R" in message
    assert repr(bad.split(",")[-1].strip()) in message


@pytest.mark.parametrize("rate", [0, -1, math.inf, math.nan])
def test_limiter_refuses_impossible_rates(rate):
    with pytest.raises(ValueError):
        RateLimiter(rate)


@pytest.mark.parametrize("value", ["1e-300", "0.001", "1e300", "5e6", "host=1e-9"])
def test_absurd_rates_are_usage_errors(value):
    with pytest.raises(UsageError, match="from 0.01 to 1000000"):
        parse_rate_limits([value])


def test_on_wait_hears_the_host_and_the_wait_before_the_request_is_held():
    time_source = SimulatedTime()
    limiter = RateLimiter(4, clock=time_source.clock, sleep=time_source.sleep)
    heard: list[tuple[str, float, float]] = []
    client = httpx.Client(
        transport=RateLimit(
            httpx.HTTPTransport(),
            RateLimitPolicy(limiter),
            on_wait=lambda host, seconds: heard.append((host, seconds, time_source.now)),
        )
    )
    with respx.mock(using="httpcore") as mock:
        mock.get(host="registry.example").mock(return_value=httpx.Response(200))
        for _ in range(3):
            client.get("http://registry.example:5000/v2/")
    # The first request goes at once; each later one hears of its wait before sleeping it.
    assert heard == [
        ("registry.example:5000", pytest.approx(0.25), pytest.approx(0.0)),
        ("registry.example:5000", pytest.approx(0.25), pytest.approx(0.25)),
    ]


def test_the_builder_wires_on_rate_wait_into_the_chain():
    heard: list[tuple[str, float]] = []
    settings = ChainSettings(
        NetworkSettings(rate_limits=("20",)),
        on_rate_wait=lambda host, seconds: heard.append((host, seconds)),
    )
    with respx.mock(using="httpcore") as mock, build_client(settings) as client:
        mock.get(host="registry.example").mock(return_value=httpx.Response(200))
        client.get("https://registry.example/v2/")
        client.get("https://registry.example/v2/")
    assert [host for host, _ in heard] == ["registry.example:443"]
    assert 0 < heard[0][1] <= 0.05
