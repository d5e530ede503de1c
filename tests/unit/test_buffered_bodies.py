"""Retry reads buffered bodies inside its loop: cut bodies are retried, endless ones refused,
trickling ones stopped at the deadline; the token fetch uses all of it."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest
import respx

from occystrap.credentials import CredentialStore
from occystrap.errors import OccystrapError
from occystrap.middleware.extensions import ATTEMPTS, BUFFER
from occystrap.middleware.registry_auth import TOKEN_RESPONSE_LIMIT, RegistryAuth
from occystrap.middleware.retry import DeadlineExceeded, ResponseTooLarge, Retry

URL = "https://registry.test/v2/a/manifests/v1"
REALM = "https://auth.test/token"
MANIFEST = b'{"schemaVersion": 2}'


class CutMidBody(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield MANIFEST[:5]
        raise httpx.ReadError("connection reset")


class Endless(httpx.SyncByteStream):
    """Counts how much of an endless body was asked for."""

    def __init__(self, step: bytes = b"x" * 65536) -> None:
        self.step, self.served = step, 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.served += len(self.step)
            yield self.step


def _client(**options: object) -> httpx.Client:
    sleeps: list[float] = []
    retry = Retry(httpx.HTTPTransport(), sleep=sleeps.append, rng=random.Random(1), **options)
    return httpx.Client(transport=retry)


def test_a_body_cut_mid_read_is_fetched_again():
    with respx.mock(using="httpcore") as mock, _client() as client:
        mock.get(URL).mock(
            side_effect=[
                httpx.Response(200, stream=CutMidBody()),
                httpx.Response(200, content=MANIFEST),
            ]
        )
        response = client.get(URL, extensions={BUFFER: 1024})
    assert response.content == MANIFEST
    assert response.extensions[ATTEMPTS] == 2


def test_an_unbuffered_body_is_left_streaming():
    """Layers resume with Range themselves: Retry must not read them."""
    endless = Endless()
    with respx.mock(using="httpcore") as mock, _client() as client:
        mock.get(URL).mock(return_value=httpx.Response(200, stream=endless))
        with client.stream("GET", URL) as response:
            assert response.status_code == 200
            assert endless.served == 0


def test_a_body_past_its_limit_is_refused_without_reading_on():
    endless = Endless()
    with respx.mock(using="httpcore") as mock, _client() as client:
        route = mock.get(URL).mock(return_value=httpx.Response(200, stream=endless))
        with pytest.raises(ResponseTooLarge) as caught:
            client.get(URL, extensions={BUFFER: 100_000})
        assert route.call_count == 1  # a hostile answer is not asked for again
    assert isinstance(caught.value, OccystrapError)
    assert "registry.test:443" in str(caught.value)
    assert endless.served <= 100_000 + 65536


def test_an_error_body_is_read_whole_but_capped():
    endless = Endless()
    with respx.mock(using="httpcore") as mock, _client(retries=0) as client:
        mock.get(URL).mock(return_value=httpx.Response(404, stream=endless))
        with client.stream("GET", URL) as response:
            assert response.status_code == 404
            assert len(response.read()) == 64 * 1024
    assert endless.served <= 2 * 65536


def test_a_trickling_body_stops_at_the_deadline():
    now = [0.0]

    class Trickle(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            while True:
                now[0] += 1.0  # a byte a second
                yield b"x"

    with respx.mock(using="httpcore") as mock, _client(deadline=30, clock=lambda: now[0]) as c:
        mock.get(URL).mock(return_value=httpx.Response(200, stream=Trickle()))
        with pytest.raises(DeadlineExceeded, match="within 30 s"):
            c.get(URL, extensions={BUFFER: 1024})
    assert 30 <= now[0] <= 32


def test_no_retry_starts_after_the_deadline():
    now = [0.0]

    def slow_503(request: httpx.Request) -> httpx.Response:
        now[0] += 20.0
        return httpx.Response(503)

    with respx.mock(using="httpcore") as mock, _client(deadline=30, clock=lambda: now[0]) as c:
        route = mock.get(URL).mock(side_effect=slow_503)
        assert c.get(URL).status_code == 503
        assert route.call_count == 2


def test_an_endless_token_answer_is_refused_and_bounded():
    endless = Endless(b'{"token": "' + b"a" * 65536)
    chain = RegistryAuth(
        Retry(httpx.HTTPTransport(), sleep=lambda s: None), CredentialStore.empty()
    )
    challenge = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="registry.test"'}
    with respx.mock(using="httpcore") as mock, httpx.Client(transport=chain) as client:
        mock.get(URL).respond(401, headers=challenge)
        mock.get(url__startswith=REALM).mock(return_value=httpx.Response(200, stream=endless))
        with pytest.raises(ResponseTooLarge, match="auth.test"):
            client.get(URL)
    assert endless.served <= TOKEN_RESPONSE_LIMIT + 2 * 65536


def test_a_token_answer_cut_mid_body_is_fetched_again():
    chain = RegistryAuth(
        Retry(httpx.HTTPTransport(), sleep=lambda s: None), CredentialStore.empty()
    )
    challenge = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="registry.test"'}

    class CutToken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"tok'
            raise httpx.RemoteProtocolError("peer closed connection")

    def registry(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Bearer t1":
            return httpx.Response(200, content=MANIFEST)
        return httpx.Response(401, headers=challenge)

    with respx.mock(using="httpcore") as mock, httpx.Client(transport=chain) as client:
        mock.get(URL).mock(side_effect=registry)
        tokens = mock.get(url__startswith=REALM).mock(
            side_effect=[
                httpx.Response(200, stream=CutToken()),
                httpx.Response(200, json={"token": "t1"}),
            ]
        )
        assert client.get(URL).content == MANIFEST
    assert tokens.call_count == 2


def test_layer_transfers_are_not_cut_short_by_the_deadline():
    """A layer PUT that took longer than the deadline is still retried after a 503."""
    now = [0.0]
    upload = "https://registry.test/v2/a/blobs/uploads/session?digest=sha256:aa"

    def slow_503(request: httpx.Request) -> httpx.Response:
        now[0] += 1000.0
        return httpx.Response(503)

    with respx.mock(using="httpcore") as mock, _client(deadline=30, clock=lambda: now[0]) as c:
        route = mock.put(upload).mock(side_effect=[slow_503, httpx.Response(201)])
        assert c.put(upload, content=b"layer").status_code == 201
        assert route.call_count == 2
