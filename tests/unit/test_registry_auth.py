"""RegistryAuth against a fake registry and token server, mocked at the httpcore level."""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.credentials import Credential, CredentialStore
from occystrap.errors import RegistryError
from occystrap.middleware.extensions import SCOPE
from occystrap.middleware.registry_auth import RegistryAuth, normalise_scopes

REGISTRY = "https://registry.test"
REALM = "https://auth.test/token"
PASSWORD = "hunter2-secret"
_REPO_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs)/")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeRegistry:
    """A token server plus a registry that checks each token's granted actions."""

    def __init__(self, token_field: str = "token", expires_in: int | None = 300) -> None:
        self.token_field = token_field
        self.expires_in = expires_in
        self.granted: dict[str, set[tuple[str, str]]] = {}
        self.token_requests: list[httpx.Request] = []
        self.registry_requests: list[httpx.Request] = []
        self.token_delay = 0.0
        self.lock = threading.Lock()

    def token_endpoint(self, request: httpx.Request) -> httpx.Response:
        time.sleep(self.token_delay)
        if request.method == "POST":
            form = parse_qs(request.content.decode())
            scopes = form["scope"][0].split(" ")
        else:
            scopes = request.url.params.get_list("scope")
        with self.lock:
            self.token_requests.append(request)
            token = f"tok{len(self.token_requests)}"
            self.granted[token] = {
                (scope.rpartition(":")[0], action)
                for scope in scopes
                for action in scope.rpartition(":")[2].split(",")
            }
        document = {self.token_field: token}
        if self.expires_in is not None:
            document["expires_in"] = self.expires_in
        return httpx.Response(200, json=document)

    def registry(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.registry_requests.append(request)
        name = _REPO_PATH.match(request.url.path).group("name")
        action = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(request.method, "push")
        needed = {(f"repository:{name}", action)}
        challenge_actions = "pull" if action == "pull" else f"pull,{action}"
        if "mount" in request.url.params:
            needed.add((f"repository:{request.url.params['from']}", "pull"))
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if needed <= self.granted.get(token, set()):
            return httpx.Response(200, content=b"ok")
        return httpx.Response(
            401,
            headers={
                "WWW-Authenticate": f'Bearer realm="{REALM}",service="registry.test",'
                f'scope="repository:{name}:{challenge_actions}"'
            },
        )

    def token_scopes(self) -> list[list[str]]:
        scopes = []
        for request in self.token_requests:
            if request.method == "POST":
                scopes.append(parse_qs(request.content.decode())["scope"][0].split(" "))
            else:
                scopes.append(request.url.params.get_list("scope"))
        return scopes


@pytest.fixture
def fake():
    registry = FakeRegistry()
    with respx.mock(using="httpcore", assert_all_called=False) as mock:
        mock.route(host="auth.test").mock(side_effect=registry.token_endpoint)
        mock.route(host="registry.test").mock(side_effect=registry.registry)
        registry.mock = mock
        yield registry


def _client(store: CredentialStore | None = None, **kwargs) -> httpx.Client:
    store = store or CredentialStore.empty()
    return httpx.Client(transport=RegistryAuth(httpx.HTTPTransport(), store, **kwargs))


def _store_with_password() -> CredentialStore:
    return CredentialStore({"registry.test": Credential("alice", PASSWORD)}, [])


def test_token_flow_with_basic_credentials(fake):
    with _client(_store_with_password()) as client:
        response = client.get(f"{REGISTRY}/v2/lib/app/manifests/latest")
    assert response.status_code == 200
    (token_request,) = fake.token_requests
    assert token_request.method == "GET"
    assert token_request.headers["authorization"] == _basic("alice", PASSWORD)
    assert token_request.url.params.get_list("service") == ["registry.test"]
    assert token_request.url.params.get_list("scope") == ["repository:lib/app:pull"]
    assert [r.headers.get("authorization") for r in fake.registry_requests] == [None, "Bearer tok1"]


def test_anonymous_token_flow(fake):
    with _client() as client:
        assert client.get(f"{REGISTRY}/v2/app/manifests/1").status_code == 200
    (token_request,) = fake.token_requests
    assert "authorization" not in token_request.headers


def test_identity_token_uses_oauth2_refresh_grant(fake):
    store = CredentialStore({"registry.test": Credential(None, None, "refresh-me")}, [])
    with _client(store, client_id="tester") as client:
        assert client.get(f"{REGISTRY}/v2/app/blobs/sha256:aa").status_code == 200
    (token_request,) = fake.token_requests
    assert token_request.method == "POST"
    assert "authorization" not in token_request.headers
    assert parse_qs(token_request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["refresh-me"],
        "service": ["registry.test"],
        "scope": ["repository:app:pull"],
        "client_id": ["tester"],
    }


@pytest.mark.parametrize("token_field", ["token", "access_token"])
def test_either_token_field_is_accepted(fake, token_field):
    fake.token_field = token_field
    with _client() as client:
        assert client.get(f"{REGISTRY}/v2/app/manifests/1").status_code == 200


def test_one_token_fetch_per_scope_over_many_requests(fake):
    with _client() as client:
        for index in range(10):
            assert client.get(f"{REGISTRY}/v2/app/blobs/sha256:{index}").status_code == 200
            assert client.head(f"{REGISTRY}/v2/app/manifests/{index}").status_code == 200
        for index in range(5):
            assert client.get(f"{REGISTRY}/v2/other/blobs/sha256:{index}").status_code == 200
    assert fake.token_scopes() == [["repository:app:pull"], ["repository:other:pull"]]
    # Only the very first request met a 401; "other" was authenticated pre-emptively.
    assert len(fake.registry_requests) == 25 + 1


def test_token_expiry_with_fake_clock(fake):
    now = [1000.0]
    with _client(clock=lambda: now[0]) as client:
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        now[0] += 280  # within expires_in=300 minus the margin
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        assert len(fake.token_requests) == 1
        now[0] += 15  # past 300 - 10
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        assert len(fake.token_requests) == 2


def test_default_expiry_is_sixty_seconds(fake):
    fake.expires_in = None
    now = [0.0]
    with _client(clock=lambda: now[0]) as client:
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        now[0] = 45.0
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        assert len(fake.token_requests) == 1
        now[0] = 61.0
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        assert len(fake.token_requests) == 2


def test_single_flight_under_sixteen_threads(fake):
    fake.token_delay = 0.2
    barrier = threading.Barrier(16)
    statuses: list[int] = []
    with _client() as client:

        def pull(index: int) -> None:
            barrier.wait()
            statuses.append(client.get(f"{REGISTRY}/v2/app/blobs/sha256:{index}").status_code)

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 16
    assert len(fake.token_requests) == 1


def test_push_escalates_to_pull_push(fake):
    with _client() as client:
        assert client.get(f"{REGISTRY}/v2/app/manifests/1").status_code == 200
        assert client.put(f"{REGISTRY}/v2/app/manifests/1", content=b"{}").status_code == 200
        # A later pull is covered by the pull,push token or the pull one: no new fetch.
        assert client.get(f"{REGISTRY}/v2/app/manifests/2").status_code == 200
    assert fake.token_scopes() == [["repository:app:pull"], ["repository:app:pull,push"]]
    # The PUT went out with a pre-emptive token and never met a 401.
    assert [r.method for r in fake.registry_requests] == ["GET", "GET", "PUT", "GET"]


def test_insufficient_preemptive_token_gets_union_of_scopes(fake):
    with _client() as client:
        client.get(f"{REGISTRY}/v2/app/manifests/1")
        assert client.delete(f"{REGISTRY}/v2/app/manifests/sha256:1").status_code == 200
    assert fake.token_scopes() == [
        ["repository:app:pull"],
        ["repository:app:pull,push"],
        ["repository:app:delete,pull,push"],
    ]


def test_mount_adds_the_source_repository_scope(fake):
    url = f"{REGISTRY}/v2/dest/blobs/uploads/?mount=sha256:1&from=src"
    with _client() as client:
        client.get(f"{REGISTRY}/v2/dest/manifests/1")
        response = client.post(url, extensions={SCOPE: ["repository:src:pull"]})
    assert response.status_code == 200
    assert fake.token_scopes()[-1] == ["repository:dest:pull,push", "repository:src:pull"]
    assert len(fake.token_requests) == 2


def test_unreplayable_body_returns_the_401_but_learns_the_host(fake):
    with _client() as client:
        response = client.put(f"{REGISTRY}/v2/app/blobs/uploads/x", content=iter([b"data"]))
        assert response.status_code == 401
        assert fake.token_requests == []
        response = client.put(f"{REGISTRY}/v2/app/blobs/uploads/x", content=iter([b"data"]))
        assert response.status_code == 200
    assert fake.token_scopes() == [["repository:app:pull,push"]]


def test_token_endpoint_failure_is_a_registry_error_without_secrets():
    with respx.mock(using="httpcore") as mock:
        mock.get(url__startswith=REALM).respond(401, json={"details": "bad"})
        mock.get(f"{REGISTRY}/v2/app/manifests/1").respond(
            401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="s"'}
        )
        with _client(_store_with_password()) as client, pytest.raises(RegistryError) as caught:
            client.get(f"{REGISTRY}/v2/app/manifests/1")
    message = str(caught.value)
    assert REALM in message and "repository:app:pull" in message and "HTTP 401" in message
    assert PASSWORD not in message and "alice" not in message


def test_basic_challenge_then_preemptive_basic():
    expected = _basic("alice", PASSWORD)
    seen: list[str | None] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == expected:
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})

    with respx.mock(using="httpcore") as mock:
        mock.route(host="registry.test").mock(side_effect=registry)
        with _client(_store_with_password()) as client:
            assert client.get(f"{REGISTRY}/v2/a/manifests/1").status_code == 200
            assert client.get(f"{REGISTRY}/v2/a/manifests/2").status_code == 200
        with _client() as anonymous:
            assert anonymous.get(f"{REGISTRY}/v2/a/manifests/1").status_code == 401
    assert seen == [None, expected, expected, None]


def test_known_bearer_host_does_not_make_another_host_preemptive(fake):
    seen: list[str | None] = []

    def mirror(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(404)

    fake.mock.route(host="mirror.test").mock(side_effect=mirror)
    with _client(_store_with_password()) as client:
        assert client.get(f"{REGISTRY}/v2/app/manifests/1").status_code == 200
        assert client.get("https://mirror.test/v2/app/manifests/1").status_code == 404
        assert client.get("http://registry.test/v2/app/manifests/1").status_code == 200
    assert seen == [None]
    assert fake.registry_requests[-2].headers.get("authorization") is None


def test_other_hosts_never_get_this_hosts_credentials():
    """A Basic challenge from a host we hold nothing for is not answered with another's secret."""
    seen: list[str | None] = []

    def other(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    with respx.mock(using="httpcore") as mock:
        mock.route(host="mirror.test").mock(side_effect=other)
        with _client(_store_with_password()) as client:
            assert client.get("https://mirror.test/v2/a/manifests/1").status_code == 401
    assert seen == [None]


def test_redirect_hop_to_cdn_carries_no_authorization(fake):
    """The CDN path looks like a registry path, so only the per-host decision keeps it clean."""
    cdn_headers: list[httpx.Headers] = []

    def cdn(request: httpx.Request) -> httpx.Response:
        cdn_headers.append(request.headers)
        return httpx.Response(200, content=b"blob")

    def registry_or_redirect(request: httpx.Request) -> httpx.Response:
        response = fake.registry(request)
        if response.status_code == 200 and "/blobs/" in request.url.path:
            return httpx.Response(
                307, headers={"Location": "https://cdn.test/v2/app/blobs/sha256:1?sig=1"}
            )
        return response

    fake.mock.route(host="registry.test").mock(side_effect=registry_or_redirect)
    fake.mock.route(host="cdn.test").mock(side_effect=cdn)
    with _client(_store_with_password()) as client:
        client.follow_redirects = True
        for _ in range(2):  # first via the challenge, then pre-emptively
            response = client.get(f"{REGISTRY}/v2/app/blobs/sha256:1")
            assert response.status_code == 200 and response.content == b"blob"
    assert len(cdn_headers) == 2
    assert all("authorization" not in headers for headers in cdn_headers)


def test_no_secret_in_debug_logs(fake, caplog):
    store = CredentialStore({"registry.test": Credential("alice", PASSWORD)}, [])
    with caplog.at_level(logging.DEBUG), _client(store) as client:
        client.get(f"{REGISTRY}/v2/app/manifests/1")
    assert "fetched token" in caplog.text
    assert PASSWORD not in caplog.text and "tok1" not in caplog.text


def test_caller_authorization_is_left_alone(fake):
    with _client() as client:
        response = client.get(
            f"{REGISTRY}/v2/app/manifests/1", headers={"Authorization": "Bearer mine"}
        )
    assert response.status_code == 401
    assert fake.token_requests == []


_actions = st.lists(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1, max_size=4)
_names = st.sampled_from(["a", "b/c", "registry:catalog"])


@given(st.lists(st.tuples(_names, _actions), max_size=6), st.randoms())
def test_scope_normalisation_ignores_order_and_grouping(entries, random):
    scopes = [f"repository:{name}:{','.join(actions)}" for name, actions in entries]
    shuffled = list(scopes)
    random.shuffle(shuffled)
    split = [f"repository:{name}:{action}" for name, actions in entries for action in actions]
    assert normalise_scopes(scopes) == normalise_scopes(shuffled) == normalise_scopes(split)
    assert normalise_scopes(normalise_scopes(scopes)) == normalise_scopes(scopes)


def test_no_credentials_to_a_plain_http_realm_from_an_https_registry():
    with respx.mock(using="httpcore") as mock:
        token_route = mock.get(url__startswith="http://auth.test/token").respond(
            200, json={"token": "t"}
        )
        mock.get(f"{REGISTRY}/v2/app/manifests/1").mock(
            side_effect=[
                httpx.Response(
                    401,
                    headers={"WWW-Authenticate": 'Bearer realm="http://auth.test/token?a=1"'},
                ),
                httpx.Response(200),
            ]
        )
        with _client(_store_with_password()) as client:
            assert client.get(f"{REGISTRY}/v2/app/manifests/1").status_code == 200
    token_request = token_route.calls.last.request
    assert "authorization" not in token_request.headers
    assert token_request.url.params.get_list("a") == ["1"]
    assert token_request.url.params.get_list("scope") == ["repository:app:pull"]


def test_repository_scoped_credentials_go_to_their_repository_only(fake):
    """Two accounts on one registry (a copy's --src-creds and --dest-creds): each token
    request carries the account of the repository it is for."""
    store = CredentialStore(
        {
            "registry.test/team/src": Credential("reader", "r-secret"),
            "registry.test/dst": Credential("writer", "w-secret"),
        },
        [],
    )
    with _client(store) as client:
        assert client.get(f"{REGISTRY}/v2/team/src/manifests/1").status_code == 200
        assert client.put(f"{REGISTRY}/v2/dst/manifests/1", content=b"m").status_code == 200
        assert client.get(f"{REGISTRY}/v2/other/manifests/1").status_code == 200
    sent = [request.headers.get("authorization") for request in fake.token_requests]
    assert sent == [_basic("reader", "r-secret"), _basic("writer", "w-secret"), None]


def test_repository_scoped_basic_credentials(fake):
    seen: list[tuple[str, str | None]] = []

    def basic_registry(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.headers.get("authorization"):
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    fake.mock.route(host="registry.test").mock(side_effect=basic_registry)
    store = CredentialStore({"registry.test/a": Credential("alice", PASSWORD)}, [])
    with _client(store) as client:
        assert client.get(f"{REGISTRY}/v2/a/manifests/1").status_code == 200
        assert client.get(f"{REGISTRY}/v2/b/manifests/1").status_code == 401
    assert seen == [
        ("/v2/a/manifests/1", None),
        ("/v2/a/manifests/1", _basic("alice", PASSWORD)),
        ("/v2/b/manifests/1", None),
    ]


def test_a_token_is_sent_only_to_the_host_it_was_fetched_for(fake):
    """Another host naming the origin's realm (a redirect target, a mirror) gets its own token,
    fetched with its own credentials: here none."""
    fake.mock.route(host="mirror.test").mock(side_effect=fake.registry)
    with _client(_store_with_password()) as client:
        assert client.get(f"{REGISTRY}/v2/lib/app/manifests/latest").status_code == 200
        assert client.get("https://mirror.test/v2/lib/app/blobs/sha256:aa").status_code == 200
        assert client.get(f"{REGISTRY}/v2/lib/app/blobs/sha256:aa").status_code == 200
    origin_fetch, mirror_fetch = fake.token_requests
    assert origin_fetch.headers["authorization"] == _basic("alice", PASSWORD)
    assert "authorization" not in mirror_fetch.headers
    sent = [(r.url.host, r.headers.get("authorization")) for r in fake.registry_requests]
    assert sent == [
        ("registry.test", None),
        ("registry.test", "Bearer tok1"),
        ("mirror.test", None),
        ("mirror.test", "Bearer tok2"),
        ("registry.test", "Bearer tok1"),
    ]


def test_a_refused_plain_http_realm_says_the_credentials_were_withheld():
    """Not "check --username/--password": they were right, and deliberately not sent."""
    with respx.mock(using="httpcore") as mock:
        mock.get(url__startswith="http://auth.test/token").respond(401)
        mock.get(f"{REGISTRY}/v2/app/manifests/1").respond(
            401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.test/token"'}
        )
        with (
            _client(_store_with_password()) as client,
            pytest.raises(RegistryError) as raised,
        ):
            client.get(f"{REGISTRY}/v2/app/manifests/1")
    message = str(raised.value)
    assert "not sent" in message and "plain HTTP" in message, message
    assert "check --username" not in message
