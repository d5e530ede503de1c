"""Retry middleware: which failures are retried, how long it waits, and what it never re-sends."""

import logging
import random
import string
from datetime import UTC, datetime
from email.utils import format_datetime

import httpcore
import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.middleware.base import Middleware
from occystrap.middleware.extensions import (
    ATTEMPT,
    ATTEMPTS,
    NO_RETRY,
    REPLAYABLE,
    RETRY_UNSAFE,
)
from occystrap.middleware.retry import Retry, backoff_delay, parse_retry_after
from occystrap.middleware.transport import UntrustedCertificateError

URL = "https://registry.example/v2/library/busybox/manifests/latest"


class Recorder(Middleware):
    """Sits under Retry and remembers each attempt number and response it passed back."""

    def __init__(self, next_transport: httpx.BaseTransport) -> None:
        super().__init__(next_transport)
        self.attempts: list[int] = []
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(request.extensions[ATTEMPT])
        response = self.next.handle_request(request)
        self.responses.append(response)
        return response


def make_client(**retry_options) -> tuple[httpx.Client, list[float], Recorder]:
    sleeps: list[float] = []
    recorder = Recorder(httpx.HTTPTransport())
    retry = Retry(recorder, sleep=sleeps.append, rng=random.Random(1), **retry_options)
    return httpx.Client(transport=retry), sleeps, recorder


@pytest.mark.parametrize(
    ("raised", "seen_by_caller"),
    [
        (httpcore.ConnectError, httpx.ConnectError),
        (httpcore.ConnectTimeout, httpx.ConnectTimeout),
        (httpcore.ReadTimeout, httpx.ReadTimeout),
        (httpcore.WriteTimeout, httpx.WriteTimeout),
        (httpcore.PoolTimeout, httpx.PoolTimeout),
        (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
        (httpcore.ReadError, httpx.ReadError),
        (httpcore.WriteError, httpx.WriteError),
    ],
)
def test_network_failures_are_retried(raised, seen_by_caller):
    client, sleeps, recorder = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=[raised("boom"), httpx.Response(200, text="ok")])
        response = client.get(URL)
    assert response.status_code == 200
    assert response.text == "ok"
    assert route.call_count == 2
    assert recorder.attempts == [1, 2]
    assert response.extensions[ATTEMPTS] == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5


@pytest.mark.parametrize("raised", [httpcore.ConnectError, httpcore.ReadTimeout])
def test_exhausted_retries_reraise_the_last_exception(raised):
    client, sleeps, recorder = make_client(retries=2)
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=raised("down"))
        with pytest.raises(httpx.TransportError):
            client.get(URL)
    assert route.call_count == 3
    assert recorder.attempts == [1, 2, 3]
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status):
    client, sleeps, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=[httpx.Response(status), httpx.Response(200)])
        response = client.get(URL)
    assert response.status_code == 200
    assert route.call_count == 2
    assert response.extensions[ATTEMPTS] == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 501])
def test_other_statuses_pass_through_once(status):
    client, sleeps, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=[httpx.Response(status), httpx.Response(200)])
        response = client.get(URL, follow_redirects=False)
    assert response.status_code == status
    assert route.call_count == 1
    assert response.extensions[ATTEMPTS] == 1
    assert sleeps == []


def test_exhausted_status_returns_last_response_unclosed():
    client, sleeps, recorder = make_client(retries=2)
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(
            side_effect=[httpx.Response(503, text=f"busy {n}") for n in range(1, 4)]
        )
        response = client.get(URL)
    assert route.call_count == 3
    assert response.status_code == 503
    assert response.text == "busy 3"
    assert response.extensions[ATTEMPTS] == 3
    assert len(sleeps) == 2
    assert [r.is_closed for r in recorder.responses[:2]] == [True, True]


def test_discarded_responses_are_closed_before_sleeping():
    recorder_state: list[bool] = []
    recorder = Recorder(httpx.HTTPTransport())

    def sleep(_delay: float) -> None:
        recorder_state.append(recorder.responses[-1].is_closed)

    client = httpx.Client(transport=Retry(recorder, sleep=sleep))
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(500), httpx.Response(502), httpx.Response(200)]
        )
        assert client.get(URL).status_code == 200
    assert recorder_state == [True, True]


def test_retry_after_seconds_is_honoured():
    client, sleeps, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200)]
        )
        assert client.get(URL).status_code == 200
    assert sleeps == [7.0]


def test_retry_after_http_date_is_honoured():
    client, sleeps, _ = make_client()
    later = format_datetime(datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC), True)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(503, headers={"Retry-After": later}), httpx.Response(200)]
        )
        assert client.get(URL).status_code == 200
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 31


@pytest.mark.parametrize("hostile", ["3600", "Fri, 31 Dec 9999 23:59:59 GMT", "1" * 400])
def test_retry_after_is_capped(hostile):
    client, sleeps, _ = make_client(retry_after_cap=60.0)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(503, headers={"Retry-After": hostile}), httpx.Response(200)]
        )
        assert client.get(URL).status_code == 200
    assert sleeps == [60.0]


def test_garbage_retry_after_falls_back_to_backoff():
    client, sleeps, _ = make_client(backoff_base=2.0)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(503, headers={"Retry-After": "soon"}), httpx.Response(200)]
        )
        assert client.get(URL).status_code == 200
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 2.0


def test_backoff_grows_exponentially_up_to_the_cap():
    client, sleeps, _ = make_client(retries=6, backoff_base=1.0, backoff_max=4.0)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(return_value=httpx.Response(500))
        client.get(URL)
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert len(sleeps) == 6
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(sleeps, ceilings, strict=True))
    assert max(sleeps) > 1.0


def test_consumed_generator_body_is_never_replayed():
    client, sleeps, _ = make_client()

    def body():
        yield b"chunk one "
        yield b"chunk two"

    with respx.mock(using="httpcore") as mock:
        route = mock.put(URL).mock(side_effect=[httpx.Response(503), httpx.Response(201)])
        response = client.put(URL, content=body())
    assert route.call_count == 1
    assert response.status_code == 503
    assert response.extensions[ATTEMPTS] == 1
    assert sleeps == []


def test_consumed_generator_body_is_not_replayed_after_a_network_error():
    client, _, _ = make_client()

    def body():
        yield b"data"

    with respx.mock(using="httpcore") as mock:
        route = mock.put(URL).mock(side_effect=[httpcore.WriteError("broken pipe")])
        with pytest.raises(httpx.WriteError):
            client.put(URL, content=body())
    assert route.call_count == 1


def test_bytes_body_is_replayed():
    client, _, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.put(URL).mock(side_effect=[httpx.Response(502), httpx.Response(201)])
        response = client.put(URL, content=b"manifest bytes")
    assert response.status_code == 201
    assert [call.request.content for call in route.calls] == [b"manifest bytes"] * 2


class ReopeningBody:
    """A body that re-reads its source on every iteration, as a file-backed upload would."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.openings = 0

    def __iter__(self):
        self.openings += 1
        yield from self.chunks


def test_replayable_stream_is_replayed():
    client, _, _ = make_client()
    body = ReopeningBody([b"layer ", b"bytes"])
    with respx.mock(using="httpcore") as mock:
        route = mock.put(URL).mock(side_effect=[httpx.Response(504), httpx.Response(201)])
        request = client.build_request("PUT", URL, content=body, extensions={REPLAYABLE: True})
        response = client.send(request)
    assert response.status_code == 201
    assert body.openings == 2
    assert [call.request.content for call in route.calls] == [b"layer bytes"] * 2


def test_unmarked_stream_is_not_replayed():
    client, _, _ = make_client()
    body = ReopeningBody([b"layer"])
    with respx.mock(using="httpcore") as mock:
        route = mock.put(URL).mock(side_effect=[httpx.Response(504), httpx.Response(201)])
        response = client.put(URL, content=body)
    assert response.status_code == 504
    assert route.call_count == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_unsafe_methods_are_not_retried_by_default(method):
    client, sleeps, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.route(method=method, url=URL).mock(
            side_effect=[httpx.Response(503), httpx.Response(202)]
        )
        response = client.request(method, URL, content=b"x")
    assert response.status_code == 503
    assert route.call_count == 1
    assert sleeps == []


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_unsafe_methods_are_retried_when_marked_safe(method):
    client, _, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.route(method=method, url=URL).mock(
            side_effect=[httpcore.ConnectError("refused"), httpx.Response(202)]
        )
        response = client.request(method, URL, content=b"x", extensions={RETRY_UNSAFE: True})
    assert response.status_code == 202
    assert route.call_count == 2


@pytest.mark.parametrize("method", ["HEAD", "DELETE", "OPTIONS", "PUT"])
def test_other_idempotent_methods_are_retried(method):
    client, _, _ = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.route(method=method, url=URL).mock(
            side_effect=[httpx.Response(500), httpx.Response(200)]
        )
        assert client.request(method, URL).status_code == 200
    assert route.call_count == 2


def test_no_retry_extension_disables_retry():
    client, sleeps, recorder = make_client()
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=[httpcore.ConnectError("x"), httpx.Response(200)])
        with pytest.raises(httpx.ConnectError):
            client.get(URL, extensions={NO_RETRY: True})
    assert route.call_count == 1
    assert recorder.attempts == [1]
    assert sleeps == []


def test_zero_retries_means_one_attempt():
    client, sleeps, _ = make_client(retries=0)
    with respx.mock(using="httpcore") as mock:
        route = mock.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
        assert client.get(URL).status_code == 503
    assert route.call_count == 1
    assert sleeps == []


def test_negative_retries_are_refused():
    with pytest.raises(ValueError):
        Retry(httpx.HTTPTransport(), retries=-1)


def test_retry_decisions_are_logged_without_secrets(caplog):
    client, _, _ = make_client()
    secret_url = URL + "?token=SEKRITTOKEN"
    with (
        caplog.at_level(logging.DEBUG, logger="occystrap.retry"),
        respx.mock(using="httpcore") as mock,
    ):
        mock.get(secret_url).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
        client.get(secret_url, headers={"Authorization": "Bearer SEKRITBEARER"})
    messages = [r.getMessage() for r in caplog.records if r.name == "occystrap.retry"]
    assert len(messages) == 1
    assert "GET" in messages[0] and "attempt 1" in messages[0] and "503" in messages[0]
    assert "SEKRIT" not in messages[0]


@given(st.integers(min_value=0, max_value=10**9), st.floats(0, 4e9))
def test_parse_retry_after_round_trips_seconds(seconds, now):
    assert parse_retry_after(str(seconds), now) == seconds


@given(st.integers(min_value=-(10**6), max_value=10**6), st.floats(1e9, 4e9))
def test_parse_retry_after_round_trips_http_dates(offset, now):
    header = format_datetime(datetime.fromtimestamp(int(now) + offset, UTC), usegmt=True)
    delay = parse_retry_after(header, now)
    assert delay is not None
    assert delay >= 0
    assert abs(delay - max(0, offset)) <= 1


@given(st.text())
def test_parse_retry_after_is_never_negative(value):
    delay = parse_retry_after(value, 1.7e9)
    assert delay is None or delay >= 0


@given(st.text(alphabet=string.ascii_letters + " -_!?,:", max_size=40))
def test_parse_retry_after_rejects_garbage(value):
    assert parse_retry_after(value, 1.7e9) is None


@pytest.mark.parametrize("value", ["", "soon", "-5", "1e3", "NaN", "Wed, 99 Foo 2015", "0x10"])
def test_parse_retry_after_rejects_known_garbage(value):
    assert parse_retry_after(value, 1.7e9) is None


@given(
    st.integers(min_value=1, max_value=5000),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=1000),
    st.integers(),
)
def test_backoff_delay_stays_within_full_jitter_bounds(retry_number, base, cap, seed):
    delay = backoff_delay(retry_number, base, cap, random.Random(seed))
    try:
        ceiling = min(cap, base * 2.0 ** (retry_number - 1))
    except OverflowError:
        ceiling = cap
    assert 0 <= delay <= ceiling


def test_retries_made_counts_every_retry_across_requests():
    recorder = Recorder(httpx.HTTPTransport())
    retry = Retry(recorder, sleep=lambda _: None)
    client = httpx.Client(transport=retry)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[httpx.Response(503), httpx.Response(200), httpx.Response(404)]
        )
        client.get(URL)
        client.get(URL)
    assert retry.retries_made == 1


def test_an_untrusted_certificate_is_not_retried():
    """Retrying cannot fix a CA the user has not given: fail at once with the advice."""

    class UntrustedBelow(httpx.BaseTransport):
        calls = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            UntrustedBelow.calls += 1
            raise UntrustedCertificateError("certificate of registry.example not trusted")

    sleeps: list[float] = []
    client = httpx.Client(transport=Retry(UntrustedBelow(), sleep=sleeps.append))
    with pytest.raises(UntrustedCertificateError):
        client.get(URL)
    assert UntrustedBelow.calls == 1
    assert sleeps == []
