"""QuayAuth: the API token goes only under the API base, and a 401 becomes advice."""

import httpx
import pytest
import respx

from occystrap.errors import QuayAuthError
from occystrap.middleware.quay_auth import QuayAuth

TOKEN = "quay-api-token"


def _client(**kwargs) -> httpx.Client:
    return httpx.Client(transport=QuayAuth(httpx.HTTPTransport(), **kwargs))


@pytest.mark.parametrize(
    ("url", "expect_token"),
    [
        ("https://quay.io/api/v1/repository/org/app", True),
        ("https://QUAY.io:443/api/v1", True),
        ("https://quay.io/api/v1/", True),
        ("https://quay.io/api/v10/thing", False),
        ("https://quay.io/v2/org/app/manifests/latest", False),
        ("http://quay.io/api/v1/repository", False),
        ("https://quay.io:8443/api/v1/repository", False),
        ("https://evil.test/api/v1/repository", False),
    ],
)
def test_token_only_under_api_base(url, expect_token):
    with respx.mock(using="httpcore") as mock:
        route = mock.route().respond(200)
        with _client(token=TOKEN) as client:
            client.get(url)
    sent = route.calls.last.request.headers.get("authorization")
    assert sent == (f"Bearer {TOKEN}" if expect_token else None)


def test_custom_api_base():
    with respx.mock(using="httpcore") as mock:
        route = mock.route().respond(200)
        with _client(api_base="http://127.0.0.1:8080/quay/api/v1/", token=TOKEN) as client:
            client.get("http://127.0.0.1:8080/quay/api/v1/repository/x")
            client.get("http://127.0.0.1:8080/api/v1/repository/x")
    assert [call.request.headers.get("authorization") for call in route.calls] == [
        f"Bearer {TOKEN}",
        None,
    ]


def test_no_token_means_no_header():
    with respx.mock(using="httpcore") as mock:
        route = mock.route().respond(200)
        with _client() as client:
            client.get("https://quay.io/api/v1/repository/x")
    assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize("token", [None, TOKEN])
def test_api_401_raises_quay_auth_error(token):
    with respx.mock(using="httpcore") as mock:
        mock.route().respond(401)
        with _client(token=token) as client, pytest.raises(QuayAuthError) as caught:
            client.get("https://quay.io/api/v1/repository/x")
    message = str(caught.value)
    assert "--quay-token" in message and "OCCYSTRAP_QUAY_TOKEN" in message
    assert TOKEN not in message and "\n" not in message


def test_registry_401_on_same_host_passes_through():
    with respx.mock(using="httpcore") as mock:
        mock.route().respond(401)
        with _client(token=TOKEN) as client:
            response = client.get("https://quay.io/v2/org/app/manifests/latest")
    assert response.status_code == 401


def test_token_does_not_follow_a_redirect_off_the_api_base():
    with respx.mock(using="httpcore") as mock:
        mock.get("https://quay.io/api/v1/repository").respond(
            302, headers={"Location": "https://cdn.test/api/v1/repository"}
        )
        elsewhere = mock.get("https://cdn.test/api/v1/repository").respond(200)
        with _client(token=TOKEN) as client:
            assert client.get("https://quay.io/api/v1/repository", follow_redirects=True).is_success
        assert "authorization" not in elsewhere.calls.last.request.headers
