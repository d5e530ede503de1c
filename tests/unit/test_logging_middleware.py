"""Logging middleware: one useful line per network attempt, and never a secret in it."""

import logging
import random

import httpcore
import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.middleware.extensions import ATTEMPT, MIRROR
from occystrap.middleware.logging import Logging, redact_url
from occystrap.middleware.retry import Retry

URL = "https://registry.example/v2/library/busybox/blobs/sha256:abc"


def http_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "occystrap.http"]


@pytest.fixture
def debug_logs(caplog):
    with caplog.at_level(logging.DEBUG, logger="occystrap.http"):
        yield caplog


def test_a_line_has_method_url_status_bytes_and_attempt(debug_logs):
    client = httpx.Client(transport=Logging(httpx.HTTPTransport()))
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(return_value=httpx.Response(200, content=b"x" * 1234))
        response = client.get(URL)
    assert response.content == b"x" * 1234
    [line] = http_lines(debug_logs)
    assert line.startswith(f"GET {URL} -> 200, 1234 bytes, ")
    assert line.endswith("s, attempt 1")


def test_the_line_is_written_when_the_streamed_body_is_closed(debug_logs):
    client = httpx.Client(transport=Logging(httpx.HTTPTransport()))
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(return_value=httpx.Response(206, content=b"abcdef"))
        with client.stream("GET", URL) as response:
            assert http_lines(debug_logs) == []
            assert b"".join(response.iter_raw()) == b"abcdef"
    [line] = http_lines(debug_logs)
    assert "-> 206, 6 bytes" in line


def test_no_secret_reaches_the_log(debug_logs):
    client = httpx.Client(transport=Logging(httpx.HTTPTransport()))
    url = "https://robot:HUNTER2PASSWORD@registry.example/v2/token?token=TOKENVALUE&n=5"
    with respx.mock(using="httpcore") as mock:
        mock.get(url__startswith="https://registry.example/v2/token").mock(
            return_value=httpx.Response(200, json={"token": "ISSUEDTOKEN"})
        )
        client.get(url, headers={"Authorization": "Bearer BEARERVALUE"}).read()
        client.get(url, auth=("robot", "BASICPASSWORD")).read()
    lines = http_lines(debug_logs)
    assert len(lines) == 2
    for line in lines:
        assert "registry.example/v2/token?token=REDACTED&n=5" in line
        for secret in ("HUNTER2PASSWORD", "TOKENVALUE", "BEARERVALUE", "BASICPASSWORD", "robot"):
            assert secret not in line
        assert "ISSUEDTOKEN" not in line


def test_attempt_and_mirror_are_reported(debug_logs):
    client = httpx.Client(transport=Logging(httpx.HTTPTransport()))
    mirror = "https://cache:MIRRORPASS@mirror.example"
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(return_value=httpx.Response(200))
        client.get(URL, extensions={ATTEMPT: 3, MIRROR: mirror})
    [line] = http_lines(debug_logs)
    assert line.endswith("attempt 3, mirror https://mirror.example/")


def test_each_retried_attempt_gets_its_own_line(debug_logs):
    chain = Retry(Logging(httpx.HTTPTransport()), sleep=lambda _: None, rng=random.Random(0))
    client = httpx.Client(transport=chain)
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(
            side_effect=[
                httpcore.ConnectError("refused"),
                httpx.Response(503, content=b"busy"),
                httpx.Response(200, content=b"ok"),
            ]
        )
        assert client.get(URL).content == b"ok"
    lines = http_lines(debug_logs)
    assert len(lines) == 3
    assert "-> ConnectError after " in lines[0] and lines[0].endswith("attempt 1")
    assert "-> 503, " in lines[1] and lines[1].endswith("attempt 2")
    assert "-> 200, 2 bytes" in lines[2] and lines[2].endswith("attempt 3")


def test_an_exception_is_logged_once_and_reraised(debug_logs):
    client = httpx.Client(transport=Logging(httpx.HTTPTransport()))
    with respx.mock(using="httpcore") as mock:
        mock.get(URL).mock(side_effect=httpcore.ReadTimeout("timed out"))
        with pytest.raises(httpx.ReadTimeout):
            client.get(URL)
    [line] = http_lines(debug_logs)
    assert line.startswith(f"GET {URL} -> ReadTimeout after ")


def test_nothing_is_wrapped_when_debug_is_off(caplog):
    transport = Logging(httpx.HTTPTransport())
    with (
        caplog.at_level(logging.INFO, logger="occystrap.http"),
        respx.mock(using="httpcore") as mock,
    ):
        mock.get(URL).mock(return_value=httpx.Response(200, content=b"body"))
        response = transport.handle_request(httpx.Request("GET", URL))
        assert type(response.stream).__module__.startswith("httpx")
        response.read()
        response.close()
    assert http_lines(caplog) == []


def test_a_given_logger_is_used(caplog):
    custom = logging.getLogger("tests.custom_http")
    client = httpx.Client(transport=Logging(httpx.HTTPTransport(), logger=custom))
    with (
        caplog.at_level(logging.DEBUG, logger="tests.custom_http"),
        respx.mock(using="httpcore") as mock,
    ):
        mock.get(URL).mock(return_value=httpx.Response(204))
        client.get(URL)
    assert [r.name for r in caplog.records] == ["tests.custom_http"]


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://u:p@h.example:5000/v2/?n=1#frag", "https://h.example:5000/v2/?n=1"),
        (
            "https://s3.example/b?X-Amz-Credential=AKIA&X-Amz-Signature=ff&X-Amz-Expires=300",
            "https://s3.example/b?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
            "&X-Amz-Expires=300",
        ),
        (
            "https://blob.example/c?sv=2020&sig=abc%2B&X-Amz-Security-Token=tok",
            "https://blob.example/c?sv=2020&sig=REDACTED&X-Amz-Security-Token=REDACTED",
        ),
        (
            "https://auth.example/token?access_token=a&refresh_token=b&password=c&scope=pull",
            "https://auth.example/token?access_token=REDACTED&refresh_token=REDACTED"
            "&password=REDACTED&scope=pull",
        ),
        ("https://cdn.example/x?Signature=s&Key-Pair-Id=k&Expires=9", None),
        ("https://h.example/v2/", "https://h.example/v2/"),
    ],
)
def test_redact_url(url, redacted):
    result = redact_url(url)
    if redacted is not None:
        assert result == redacted
    assert redact_url(httpx.URL(url)) == result
    assert "Signature=s" not in result


SECRET = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=6, max_size=30).filter(
    lambda secret: secret not in "REDACTED"
)


@given(SECRET, SECRET, SECRET, st.sampled_from(["token", "Password", "client_secret", "sig"]))
def test_redact_url_never_leaks_a_secret(password, token, signature, secret_name):
    url = (
        f"https://robot:{password}@registry.example/v2/x?{secret_name}={token}"
        f"&X-Amz-Signature={signature}&last=tag"
    )
    result = redact_url(url)
    for secret in (password, token, signature):
        assert secret not in result
    assert result.startswith("https://registry.example/v2/x?")
    assert result.endswith("&last=tag")
