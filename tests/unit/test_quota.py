"""Pull quotas read from answers, and a run-wide retry budget, through the real chain."""

from __future__ import annotations

import httpx
import pytest

from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.quota import QuotaBook, parse_quota
from occystrap.middleware.retry import Retry, RetryBudget


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("100;w=21600", (100, 21600)), ("76", (76, None)), (" 5 ; w = 60", (5, 60)), ("x", None)],
)
def test_parse_quota(value, parsed):
    assert parse_quota(value) == parsed


def test_the_chain_records_the_stated_quota_per_host(respx_mock):
    respx_mock.head("https://registry-1.docker.io/v2/library/alpine/manifests/3").respond(
        200,
        headers={
            "RateLimit-Limit": "100;w=21600",
            "RateLimit-Remaining": "76;w=21600",
            "Docker-Content-Digest": "sha256:" + "0" * 64,
        },
    )
    book = QuotaBook(clock=lambda: 1000.0)
    with build_client(ChainSettings(quota=book)) as http:
        http.head("https://registry-1.docker.io/v2/library/alpine/manifests/3")
    reading = book.reading("registry-1.docker.io")
    assert reading is not None
    assert (reading.limit, reading.remaining, reading.window) == (100, 76, 21600)
    assert reading.resets == 1000.0 + 21600


def test_a_retry_budget_caps_retries_across_requests(respx_mock):
    route = respx_mock.get("http://r.example/v2/").respond(503)
    budget = RetryBudget(3)
    retry = Retry(httpx.HTTPTransport(), retries=5, sleep=lambda s: None, budget=budget)
    with httpx.Client(transport=retry) as http:
        statuses = [http.get("http://r.example/v2/").status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert route.call_count == 3 + 3  # three first attempts, three retries in all
    assert budget.exhausted and retry.retries_made == 3
