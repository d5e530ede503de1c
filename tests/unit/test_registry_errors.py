"""registry_error: one line from a registry's answer, however much of it was read before."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest
import respx

from occystrap.errors import RegistryError
from occystrap.registry.errors import ERROR_BODY_LIMIT, failure_reason, registry_error

URL = "https://registry.test:5000/v2/a/b/manifests/v1"
OCI_ERROR = {"errors": [{"code": "DENIED", "message": "requested access\nis denied"}]}


@pytest.mark.parametrize("how", ["read", "unread", "partly-streamed"])
def test_the_registrys_message_reaches_the_user_however_the_body_was_handled(how):
    with respx.mock(using="httpcore") as mock, httpx.Client() as client:
        mock.put(URL).respond(403, json=OCI_ERROR)
        if how == "read":
            response = client.put(URL)
        else:
            response = client.send(client.build_request("PUT", URL), stream=True)
            if how == "partly-streamed":
                next(response.iter_raw(1))
        error = registry_error(response, "pushing manifest a/b:v1")
    message = str(error)
    assert message.startswith("registry.test:5000 answered HTTP 403 for pushing manifest a/b:v1")
    assert "\n" not in message
    if how != "partly-streamed":
        assert "(DENIED requested access is denied)" in message
    assert response.is_closed


def test_a_plain_http_request_to_a_tls_server_says_drop_insecure():
    with respx.mock(using="httpcore") as mock, httpx.Client() as client:
        mock.get(URL).respond(400, text="Client sent an HTTP request to an HTTPS server.\n")
        error = registry_error(client.get(URL), "manifest a/b:v1")
    assert "speaks TLS" in str(error) and "drop --insecure" in str(error)


def test_an_endless_error_body_is_read_only_up_to_the_limit():
    served = []

    def endless():
        while True:
            served.append(1)
            yield b"x" * 65536

    with respx.mock(using="httpcore") as mock, httpx.Client() as client:
        mock.get(URL).mock(return_value=httpx.Response(500, content=endless()))
        response = client.send(client.build_request("GET", URL), stream=True)
        registry_error(response, "manifest a/b:v1")
    assert len(served) * 65536 <= 2 * ERROR_BODY_LIMIT


def _caused_by(error: httpx.HTTPError, cause: BaseException) -> httpx.HTTPError:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RegistryError("x", status=404), "not found"),
        (RegistryError("x", status=401), "401 unauthorized"),
        (RegistryError("x", status=403), "403 forbidden"),
        (RegistryError("x", status=429), "429 too many requests"),
        (RegistryError("x", status=502), "502 bad gateway"),
        (RegistryError("x", status=599), "HTTP 599"),
        (RegistryError("h speaks TLS\n but was sent plain HTTP", status=400),
         "h speaks TLS but was sent plain HTTP"),
        (_caused_by(httpx.ConnectError("x"), ssl.SSLCertVerificationError()),
         "TLS certificate not trusted"),
        (_caused_by(httpx.ConnectError("x"), ssl.SSLError()), "TLS error"),
        (_caused_by(httpx.ConnectError("x"), socket.gaierror()), "host not found"),
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.ConnectTimeout("x"), "unreachable: connect timed out"),
        (httpx.ReadTimeout("x"), "timed out"),
        (httpx.RemoteProtocolError("x"), "network error: RemoteProtocolError"),
    ],
)  # fmt: skip
def test_failure_reason_says_in_a_few_words_why_a_registry_gave_no_answer(error, reason):
    assert failure_reason(error) == reason
