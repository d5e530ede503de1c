"""The credential-plug-in hook: a plug-in's credential reaches RegistryAuth for its own host
only, is fetched once and shared, and a refusal fetches a fresh one once."""

from __future__ import annotations

import base64

import httpx
import respx

from occystrap.credentials import Credential, CredentialStore
from occystrap.middleware.mirror import Mirror, parse_mirrors
from occystrap.middleware.provided import ProvidedCredentials
from occystrap.middleware.registry_auth import RegistryAuth

HOST = "r.example"


class Counting(ProvidedCredentials):
    def __init__(self, next_transport: httpx.BaseTransport, lifetime: float = 3600) -> None:
        super().__init__(next_transport, clock=lambda: self.now)
        self.now = 0.0
        self.lifetime = lifetime
        self.fetches = 0

    def claims(self, host: str) -> bool:
        return host == HOST

    def fetch(self, host: str, url: httpx.URL) -> tuple[Credential, float]:
        self.fetches += 1
        return Credential("AWS", f"token-{self.fetches}"), self.lifetime


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"AWS:{password}".encode()).decode()


def challenge_unless(password: str):
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == basic(password):
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    return answer


def chain(plugin_class=Counting, mirrors: list[str] | None = None, **kwargs):
    inner: httpx.BaseTransport = RegistryAuth(httpx.HTTPTransport(), CredentialStore.empty())
    if mirrors:
        inner = Mirror(inner, parse_mirrors(mirrors))
    plugin = plugin_class(inner, **kwargs)
    return plugin, httpx.Client(transport=plugin)


@respx.mock(using="httpcore")
def test_credential_is_fetched_once_and_shared(respx_mock):
    route = respx_mock.get(f"https://{HOST}/v2/").mock(side_effect=challenge_unless("token-1"))
    plugin, client = chain()
    for _ in range(3):
        assert client.get(f"https://{HOST}/v2/").status_code == 200
    assert plugin.fetches == 1
    assert route.calls.last.request.headers["authorization"] == basic("token-1")


@respx.mock(using="httpcore")
def test_refused_credential_is_refreshed_once(respx_mock):
    respx_mock.get(f"https://{HOST}/v2/").mock(side_effect=challenge_unless("token-2"))
    plugin, client = chain()
    assert client.get(f"https://{HOST}/v2/").status_code == 200
    assert plugin.fetches == 2


@respx.mock(using="httpcore")
def test_a_credential_refused_twice_gives_the_401(respx_mock):
    respx_mock.get(f"https://{HOST}/v2/").mock(side_effect=challenge_unless("never"))
    plugin, client = chain()
    assert client.get(f"https://{HOST}/v2/").status_code == 401
    assert plugin.fetches == 2


@respx.mock(using="httpcore")
def test_credential_expires_shortly_before_its_end(respx_mock):
    route = respx_mock.get(f"https://{HOST}/v2/").mock(
        side_effect=lambda request: httpx.Response(
            200 if "authorization" in request.headers else 401,
            headers={"WWW-Authenticate": 'Basic realm="r"'},
        )
    )
    plugin, client = chain(lifetime=3600)
    client.get(f"https://{HOST}/v2/")
    plugin.now = 3600 - 301  # five minutes and a second before it ends: still used
    client.get(f"https://{HOST}/v2/")
    assert plugin.fetches == 1
    plugin.now = 3600 - 299
    client.get(f"https://{HOST}/v2/")
    assert plugin.fetches == 2
    assert route.calls.last.request.headers["authorization"] == basic("token-2")


@respx.mock(using="httpcore")
def test_other_hosts_and_mirrors_never_see_it(respx_mock):
    other = respx_mock.get("https://other.example/v2/").mock(
        side_effect=challenge_unless("token-1")
    )
    mirror = respx_mock.get("https://mirror.example/v2/x/manifests/v1").mock(
        side_effect=challenge_unless("token-1")
    )
    respx_mock.get(f"https://{HOST}/v2/x/manifests/v1").mock(
        side_effect=challenge_unless("token-1")
    )
    plugin, client = chain(mirrors=[f"{HOST}=https://mirror.example"])
    assert client.get("https://other.example/v2/").status_code == 401
    assert client.get(f"https://{HOST}/v2/x/manifests/v1").status_code == 200
    assert mirror.called
    for call in [*other.calls, *mirror.calls]:
        assert "authorization" not in call.request.headers
