"""Mirror middleware: URL rewriting, fallthrough order, circuit breaker, credential isolation."""

import logging
import threading

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import UsageError
from occystrap.middleware.extensions import MIRROR, NO_RETRY, SERVED_BY
from occystrap.middleware.mirror import (
    Mirror,
    MirrorRoute,
    mirror_table,
    origin_url,
    parse_mirror,
    parse_mirrors,
    rewrite_url,
    split_env_list,
)
from occystrap.registry.hosts import canonical_registry_host

ORIGIN = "https://registry.example"
MANIFEST = "/v2/library/busybox/manifests/latest"
M1 = "http://mirror-one.example:5000/cache"
M2 = "https://mirror-two.example"


class Recorder(httpx.BaseTransport):
    """Sits under Mirror to capture the requests it sends, then uses the real transport."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


def make_client(mirrors: dict[str, list[str]], threshold: int = 3) -> tuple[httpx.Client, Recorder]:
    recorder = Recorder()
    return httpx.Client(transport=Mirror(recorder, mirrors, threshold)), recorder


def called_urls(router: respx.Router) -> list[str]:
    return [str(call.request.url) for call in router.calls]


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "docker.io=https://mirror.example:5000",
            ("registry-1.docker.io", "https://mirror.example:5000"),
        ),
        ("Index.Docker.IO=http://M.example/", ("registry-1.docker.io", "http://m.example")),
        (
            "localhost:5000=http://127.0.0.1:6000/prefix/",
            ("localhost:5000", "http://127.0.0.1:6000/prefix"),
        ),
        ("quay.io = https://m.example/a/b", ("quay.io", "https://m.example/a/b")),
        ("[::1]:5000=http://[::1]:6000", ("[::1]:5000", "http://[::1]:6000")),
    ],
)
def test_parse_mirror_accepts(value, expected):
    assert parse_mirror(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "docker.io",
        "docker.io=",
        "=https://m.example",
        "docker.io=m.example",
        "docker.io=ftp://m.example",
        "docker.io=https://m.example/?q=1",
        "docker.io=https://m.example/#frag",
        "docker.io=https://user:pw@m.example",
        "docker.io=https://m.example:70000",
        "docker.io:99999=https://m.example",
        "dock er.io=https://m.example",
        "docker.io/library=https://m.example",
    ],
)
def test_parse_mirror_rejects_with_usage_error_naming_value(value):
    with pytest.raises(UsageError) as info:
        parse_mirror(value)
    message = str(info.value)
    assert "\n" not in message
    assert repr(value) in message
    assert "--mirror SOURCE=URL" in message


@given(st.text())
def test_parse_mirror_only_ever_raises_usage_error(value):
    try:
        source, base = parse_mirror(value)
    except UsageError:
        return
    assert source == canonical_registry_host(source)
    assert not base.endswith("/")
    assert httpx.URL(base).scheme in ("http", "https")


def test_parse_mirrors_keeps_order_and_groups_by_source():
    values = [
        "docker.io=https://b.example",
        "quay.io=https://q.example",
        "registry-1.docker.io=https://a.example",
        "docker.io=https://b.example/",
    ]
    assert parse_mirrors(values) == {
        "registry-1.docker.io": ["https://b.example", "https://a.example"],
        "quay.io": ["https://q.example"],
    }


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a=1,b=2", ["a=1", "b=2"]),
        (" a=1 \n b=2,, c=3 ", ["a=1", "b=2", "c=3"]),
        ("", []),
        (" , ", []),
    ],
)
def test_split_env_list(value, expected):
    assert split_env_list(value) == expected


# --- URL rewriting -----------------------------------------------------------------------------


def test_rewrite_url_keeps_prefix_and_query():
    url = httpx.URL("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:ab?x=1&y=%2F")
    assert str(rewrite_url(url, M1)) == (
        "http://mirror-one.example:5000/cache/v2/library/busybox/blobs/sha256:ab?x=1&y=%2F"
    )


# "." and ".." are dot-segments that URL parsing removes, so no URL carries them to rewrite.
_path_segment = st.text(
    alphabet=st.sampled_from("abcxyz019-._~:@!$&'()*+,;=%2F"), min_size=1, max_size=12
).filter(lambda segment: segment not in (".", ".."))
_query = st.one_of(
    st.just(""),
    st.lists(
        st.tuples(st.text("abc_", min_size=1, max_size=5), st.text("xyz09%=/", max_size=6)),
        max_size=3,
    ).map(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)),
)
_prefix = st.lists(st.text("abcdef-_", min_size=1, max_size=6), max_size=3).map(
    lambda parts: "".join("/" + p for p in parts)
)


@given(
    segments=st.lists(_path_segment, max_size=5),
    query=_query,
    prefix=_prefix,
    trailing=st.booleans(),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_rewrite_then_origin_url_round_trips(segments, query, prefix, trailing, port):
    netloc = "registry.example" if port is None else f"registry.example:{port}"
    origin = httpx.URL(f"https://{netloc}/v2/" + "/".join(segments) + query)
    base = "http://mirror.example:5000" + prefix + ("/" if trailing else "")
    mirrored = rewrite_url(origin, base)
    assert mirrored.host == "mirror.example"
    assert mirrored.raw_path.startswith(prefix.encode() + b"/v2/")
    assert origin_url(mirrored, base, origin) == origin


# --- routing -----------------------------------------------------------------------------------


@respx.mock(using="httpcore")
def test_read_served_by_first_mirror_with_prefix(respx_mock):
    respx_mock.get(f"{M1}{MANIFEST}").respond(200, text="from mirror")
    client, recorder = make_client({"registry.example": [M1, M2]})
    response = client.get(f"{ORIGIN}{MANIFEST}?ns=registry.example")
    assert response.text == "from mirror"
    assert response.extensions[SERVED_BY] == M1
    assert called_urls(respx_mock) == [f"{M1}{MANIFEST}?ns=registry.example"]
    sent = recorder.requests[0]
    assert sent.extensions[MIRROR] == M1
    assert sent.extensions[NO_RETRY] is True
    assert sent.headers["host"] == "mirror-one.example:5000"


@respx.mock(using="httpcore")
def test_docker_hub_alias_in_request_matches_source(respx_mock):
    respx_mock.get(f"{M2}{MANIFEST}").respond(200)
    client, _ = make_client(parse_mirrors(["docker.io=" + M2]))
    assert client.get(f"https://index.docker.io{MANIFEST}").extensions[SERVED_BY] == M2


@respx.mock(using="httpcore")
def test_source_with_explicit_default_port_matches(respx_mock):
    respx_mock.get(f"{M2}{MANIFEST}").respond(200)
    client, _ = make_client({"registry.example:443": [M2]})
    assert client.get(f"{ORIGIN}{MANIFEST}").extensions[SERVED_BY] == M2


@pytest.mark.parametrize(
    "failure",
    [
        {"side_effect": httpx.ConnectError("refused")},
        {"side_effect": httpx.ConnectTimeout("slow")},
        {"side_effect": httpx.ReadTimeout("slow")},
        {"side_effect": httpx.RemoteProtocolError("garbage")},
        {"status_code": 500},
        {"status_code": 502},
        {"status_code": 429},
        {"status_code": 401},
        {"status_code": 403},
        {"status_code": 404},
    ],
)
def test_failures_fall_through_mirrors_in_order_then_origin(failure):
    with respx.mock(using="httpcore") as router:
        if "side_effect" in failure:
            router.get(f"{M1}{MANIFEST}").mock(side_effect=failure["side_effect"])
            router.get(f"{M2}{MANIFEST}").mock(side_effect=failure["side_effect"])
        else:
            router.get(f"{M1}{MANIFEST}").respond(failure["status_code"])
            router.get(f"{M2}{MANIFEST}").respond(failure["status_code"])
        router.get(f"{ORIGIN}{MANIFEST}").respond(200, text="origin")
        client, _ = make_client({"registry.example": [M1, M2]})
        response = client.get(f"{ORIGIN}{MANIFEST}")
        assert response.text == "origin"
        assert SERVED_BY not in response.extensions
        assert called_urls(router) == [f"{M1}{MANIFEST}", f"{M2}{MANIFEST}", f"{ORIGIN}{MANIFEST}"]


@respx.mock(using="httpcore")
def test_second_mirror_serves_when_first_lacks_content(respx_mock):
    respx_mock.get(f"{M1}{MANIFEST}").respond(404)
    respx_mock.get(f"{M2}{MANIFEST}").respond(200, text="two")
    client, _ = make_client({"registry.example": [M1, M2]})
    response = client.get(f"{ORIGIN}{MANIFEST}")
    assert response.text == "two"
    assert response.extensions[SERVED_BY] == M2


@respx.mock(using="httpcore")
def test_head_is_mirrored(respx_mock):
    respx_mock.head(f"{M1}{MANIFEST}").respond(200)
    client, _ = make_client({"registry.example": [M1]})
    assert client.head(f"{ORIGIN}{MANIFEST}").extensions[SERVED_BY] == M1


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_go_only_to_origin(method):
    with respx.mock(using="httpcore") as router:
        router.route(host="registry.example").respond(202)
        client, recorder = make_client({"registry.example": [M1, M2]})
        url = f"{ORIGIN}/v2/library/busybox/blobs/uploads/"
        response = client.request(method, url, content=b"data")
        assert response.status_code == 202
        assert called_urls(router) == [url]
        assert recorder.requests[0].extensions.get(MIRROR) is None


@pytest.mark.parametrize(
    "url",
    [
        f"{ORIGIN}/token?scope=x",
        f"{ORIGIN}/v2",
        f"{ORIGIN}/v1/search",
        f"{ORIGIN}/api/v1/repository/x",
        f"https://other.example{MANIFEST}",
    ],
)
def test_non_v2_paths_and_other_hosts_are_untouched(url):
    with respx.mock(using="httpcore") as router:
        router.get(url).respond(200)
        client, _ = make_client({"registry.example": [M1]})
        client.get(url)
        assert called_urls(router) == [url]


@respx.mock(using="httpcore")
def test_origin_gets_the_original_request_object(respx_mock):
    respx_mock.get(f"{M1}{MANIFEST}").respond(503)
    respx_mock.get(f"{ORIGIN}{MANIFEST}").respond(200)
    recorder = Recorder()
    mirror = Mirror(recorder, {"registry.example": [M1]})
    request = httpx.Request("GET", f"{ORIGIN}{MANIFEST}", headers={"Authorization": "Bearer o"})
    mirror.handle_request(request)
    assert recorder.requests[-1] is request


@respx.mock(using="httpcore")
def test_authorization_never_reaches_a_mirror(respx_mock):
    respx_mock.get(f"{M1}{MANIFEST}").respond(404)
    respx_mock.get(f"{M2}{MANIFEST}").respond(500)
    respx_mock.get(f"{ORIGIN}{MANIFEST}").respond(200)
    client, _ = make_client({"registry.example": [M1, M2]})
    client.get(
        f"{ORIGIN}{MANIFEST}",
        headers={"Authorization": "Bearer origin-secret", "Accept": "application/json"},
    )
    mirror_calls, origin_call = respx_mock.calls[:2], respx_mock.calls[2]
    for call in mirror_calls:
        assert "authorization" not in call.request.headers
        assert call.request.headers["accept"] == "application/json"
    assert origin_call.request.headers["authorization"] == "Bearer origin-secret"


# --- circuit breaker ---------------------------------------------------------------------------


@respx.mock(using="httpcore")
def test_dead_mirror_costs_one_connect_for_many_requests(respx_mock, caplog):
    dead = respx_mock.get(url__startswith=M1).mock(side_effect=httpx.ConnectError("refused"))
    origin = respx_mock.get(url__startswith=ORIGIN).respond(200)
    client, _ = make_client({"registry.example": [M1]})
    with caplog.at_level(logging.DEBUG, logger="occystrap.middleware.mirror"):
        for index in range(5):
            client.get(f"{ORIGIN}/v2/repo/blobs/sha256:{index}")
    assert dead.call_count == 1
    assert origin.call_count == 5
    disabled = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(disabled) == 1
    assert M1 in disabled[0].getMessage()


@respx.mock(using="httpcore")
def test_5xx_disables_mirror_after_threshold_in_a_row(respx_mock):
    failing = respx_mock.get(url__startswith=M1).respond(503)
    respx_mock.get(url__startswith=ORIGIN).respond(200)
    client, _ = make_client({"registry.example": [M1]}, threshold=3)
    for _ in range(6):
        client.get(f"{ORIGIN}{MANIFEST}")
    assert failing.call_count == 3


@respx.mock(using="httpcore")
def test_success_resets_the_5xx_count(respx_mock):
    mirror_route = respx_mock.get(url__startswith=M1)
    mirror_route.side_effect = [httpx.Response(500), httpx.Response(500), httpx.Response(200)] * 3
    respx_mock.get(url__startswith=ORIGIN).respond(200)
    client, _ = make_client({"registry.example": [M1]}, threshold=3)
    for _ in range(9):
        client.get(f"{ORIGIN}{MANIFEST}")
    assert mirror_route.call_count == 9


@respx.mock(using="httpcore")
def test_missing_content_never_disables_mirror(respx_mock):
    missing = respx_mock.get(url__startswith=M1).respond(404)
    respx_mock.get(url__startswith=ORIGIN).respond(200)
    client, _ = make_client({"registry.example": [M1]}, threshold=2)
    for _ in range(5):
        client.get(f"{ORIGIN}{MANIFEST}")
    assert missing.call_count == 5


@respx.mock(using="httpcore")
def test_dead_mirror_from_many_threads_is_tried_about_once_per_thread_at_most(respx_mock):
    dead = respx_mock.get(url__startswith=M1).mock(side_effect=httpx.ConnectError("refused"))
    live = respx_mock.get(url__startswith=M2).respond(200)
    client, _ = make_client({"registry.example": [M1, M2]})
    threads_count, per_thread = 8, 20
    barrier = threading.Barrier(threads_count)
    served: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        for index in range(per_thread):
            response = client.get(f"{ORIGIN}/v2/repo/blobs/sha256:{index}")
            with lock:
                served.append(response.extensions[SERVED_BY])

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert served == [M2] * threads_count * per_thread
    assert live.call_count == threads_count * per_thread
    # Each thread can have at most one attempt in flight when the mirror is found dead.
    assert 1 <= dead.call_count <= threads_count


# --- registries.conf routes: namespaces and pull-from-mirror -----------------------------------

DIGEST = "sha256:" + "d" * 64


@respx.mock(using="httpcore")
def test_route_replaces_the_origin_namespace_with_the_mirrors(respx_mock):
    respx_mock.get(f"{M2}/v2/hub/busybox/manifests/latest").respond(200, text="hub")
    client, recorder = make_client(
        {"registry.example/library": [MirrorRoute("https://mirror-two.example", "hub")]}
    )
    response = client.get(f"{ORIGIN}{MANIFEST}?x=1")
    assert response.text == "hub"
    assert str(recorder.requests[0].url) == f"{M2}/v2/hub/busybox/manifests/latest?x=1"
    assert response.extensions[SERVED_BY] == f"{M2}/hub"


@respx.mock(using="httpcore")
def test_longest_origin_prefix_wins_and_others_are_untouched(respx_mock):
    respx_mock.get(f"{M2}/v2/busybox/manifests/latest").respond(200)
    respx_mock.get(f"{ORIGIN}/v2/librarian/x/manifests/latest").respond(200, text="origin")
    client, _ = make_client(
        {
            "registry.example": [M1],
            "registry.example/library": [MirrorRoute("https://mirror-two.example", "")],
            "registry.example/librarian/x/y": [M1],
        }
    )
    assert client.get(f"{ORIGIN}{MANIFEST}").extensions[SERVED_BY] == M2
    respx_mock.get(f"{M1}/v2/librarian/x/manifests/latest").respond(404)
    assert client.get(f"{ORIGIN}/v2/librarian/x/manifests/latest").text == "origin"


@pytest.mark.parametrize(
    ("pull", "path", "mirrored"),
    [
        ("digest-only", "/v2/a/manifests/latest", False),
        ("digest-only", f"/v2/a/manifests/{DIGEST}", True),
        ("digest-only", f"/v2/a/blobs/{DIGEST}", True),
        ("digest-only", "/v2/a/tags/list", False),
        ("tag-only", "/v2/a/manifests/latest", True),
        ("tag-only", f"/v2/a/manifests/{DIGEST}", False),
        ("tag-only", f"/v2/a/blobs/{DIGEST}", True),
        ("all", f"/v2/a/manifests/{DIGEST}", True),
    ],
)
def test_pull_from_mirror(pull, path, mirrored):
    with respx.mock(using="httpcore", assert_all_called=False) as router:
        router.get(f"{M2}{path}").respond(200, text="mirror")
        router.get(f"{ORIGIN}{path}").respond(200, text="origin")
        client, _ = make_client({"registry.example": [MirrorRoute(M2, "", pull)]})
        assert client.get(f"{ORIGIN}{path}").text == ("mirror" if mirrored else "origin")


def test_mirror_table_puts_command_line_mirrors_first():
    from occystrap.registries_conf import MirrorEntry, RegistriesConf, RegistryEntry

    conf = RegistriesConf(
        registries=(
            RegistryEntry(
                "registry-1.docker.io",
                "registry-1.docker.io",
                mirrors=(
                    MirrorEntry("m.example/hub"),
                    MirrorEntry("p.example:5000", insecure=True, pull_from_mirror="digest-only"),
                ),
            ),
            RegistryEntry(
                "blocked.example", "blocked.example", blocked=True, mirrors=(MirrorEntry("x"),)
            ),
        )
    )
    table = mirror_table(["docker.io=https://first.example", "quay.io=https://q.example"], conf)
    assert table == {
        "registry-1.docker.io": [
            "https://first.example",
            MirrorRoute("https://m.example", "hub"),
            MirrorRoute("https://p.example:5000", "", "digest-only"),
        ],
        "quay.io": ["https://q.example"],
    }


COMPONENT = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)


@given(
    origin_ns=st.lists(COMPONENT, max_size=2),
    rest=st.lists(COMPONENT, min_size=1, max_size=3),
    mirror_ns=st.lists(COMPONENT, max_size=2),
    kind_ref=st.sampled_from([("manifests", "v1"), ("blobs", "sha256:" + "a" * 64)]),
)
def test_route_renames_the_repository_under_the_prefix(origin_ns, rest, mirror_ns, kind_ref):
    """Whatever the namespaces, the mirror is asked for its namespace + what followed the
    origin's prefix, and nothing outside the prefix is ever sent to it."""
    kind, ref = kind_ref
    seen = []

    class Capture(httpx.BaseTransport):
        def handle_request(self, request):
            seen.append(request.url)
            return httpx.Response(200)

    origin = "/".join(["registry.example", *origin_ns])
    mirror = Mirror(Capture(), {origin: [MirrorRoute(M2, "/".join(mirror_ns))]})
    name = "/".join([*origin_ns, *rest])
    mirror.handle_request(httpx.Request("GET", f"{ORIGIN}/v2/{name}/{kind}/{ref}"))
    assert str(seen[0]) == f"{M2}/v2/{'/'.join([*mirror_ns, *rest])}/{kind}/{ref}"
    if origin_ns:
        outside = "/".join(["x" + origin_ns[0], *rest])
        mirror.handle_request(httpx.Request("GET", f"{ORIGIN}/v2/{outside}/{kind}/{ref}"))
        assert str(seen[-1]).startswith(ORIGIN)
