"""Base transport: proxy choice from the environment, TLS trust, HTTP/2 and timeouts."""

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import respx
import trustme
from httpcore._backends.sync import SyncStream  # the socket reads httpcore makes
from hypothesis import given
from hypothesis import strategies as st

from occystrap.errors import UsageError
from occystrap.middleware import transport as transport_module
from occystrap.middleware.transport import (
    DEFAULT_TIMEOUT,
    READ_BYTES,
    TransportRouter,
    UntrustedCertificateError,
    build_base_transport,
    proxy_for,
)

PROXY = "http://proxy.example:3128"
TLS_RECORD_BYTES = 16 * 1024  # the most one TLS record carries


@pytest.mark.parametrize(
    "url, environ, expected",
    [
        ("https://r.example/v2/", {}, None),
        ("https://r.example/v2/", {"HTTPS_PROXY": PROXY}, PROXY),
        ("https://r.example/v2/", {"https_proxy": PROXY, "HTTPS_PROXY": "http://up:1"}, PROXY),
        ("https://r.example/v2/", {"HTTP_PROXY": PROXY}, None),
        ("http://r.example/v2/", {"HTTP_PROXY": PROXY}, PROXY),
        ("http://r.example/v2/", {"ALL_PROXY": PROXY}, PROXY),
        ("https://r.example/", {"HTTPS_PROXY": "proxy.example:3128"}, PROXY),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "*"}, None),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example"}, None),
        ("https://R.Example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.EXAMPLE"}, None),
        ("https://a.r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example"}, None),
        ("https://a.r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": ".r.example"}, None),
        ("https://a.r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "*.r.example"}, None),
        ("https://xr.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example"}, PROXY),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "other, r.example"}, None),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "no_proxy": "other r.example"}, None),
        ("https://r.example:5000/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example:5000"}, None),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example:5000"}, PROXY),
        ("https://r.example/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "r.example:443"}, None),
        ("http://10.1.2.3/", {"HTTP_PROXY": PROXY, "NO_PROXY": "10.1.2.3"}, None),
        ("http://10.1.2.3/", {"HTTP_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, None),
        ("http://11.1.2.3/", {"HTTP_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, PROXY),
        ("http://10.1.2.3/", {"HTTP_PROXY": PROXY, "NO_PROXY": "10.1.2.4"}, PROXY),
        ("http://[::1]:5000/", {"HTTP_PROXY": PROXY, "NO_PROXY": "::1"}, None),
        ("http://[::1]:5000/", {"HTTP_PROXY": PROXY, "NO_PROXY": "[::1]:5000"}, None),
        ("http://[fd00::5]/", {"HTTP_PROXY": PROXY, "NO_PROXY": "fd00::/8"}, None),
        ("http://127.0.0.1/", {"HTTP_PROXY": PROXY}, PROXY),
        ("http://127.0.0.1/", {"HTTP_PROXY": PROXY, "NO_PROXY": "localhost"}, PROXY),
        ("http://localhost/", {"HTTP_PROXY": PROXY, "NO_PROXY": "localhost"}, None),
        ("http://r.example/", {"HTTP_PROXY": PROXY, "NO_PROXY": "."}, PROXY),
    ],
)
def test_proxy_for(url, environ, expected):
    assert proxy_for(httpx.URL(url), environ) == expected


_label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_host = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(host=_host, scheme=st.sampled_from(["http", "https"]))
def test_star_and_exact_host_always_bypass_the_proxy(host, scheme):
    url = httpx.URL(f"{scheme}://{host}/v2/")
    environ = {"HTTP_PROXY": PROXY, "HTTPS_PROXY": PROXY}
    assert proxy_for(url, environ) == PROXY
    assert proxy_for(url, {**environ, "NO_PROXY": "*"}) is None
    assert proxy_for(url, {**environ, "NO_PROXY": f"elsewhere.test,{host}"}) is None
    assert proxy_for(url, {**environ, "NO_PROXY": f"x{host}"}) == PROXY


@given(parent=_host, prefix=st.one_of(st.just(""), _label.map(lambda label: label + "."), _label))
def test_parent_domain_entry_covers_subdomains_only(parent, prefix):
    host = prefix + parent
    environ = {"HTTPS_PROXY": PROXY, "NO_PROXY": parent}
    expected = None if host == parent or host.endswith("." + parent) else PROXY
    assert proxy_for(httpx.URL(f"https://{host}/"), environ) == expected


def test_http2_flag_reaches_the_connection_pool():
    assert build_base_transport(http2=True, environ={})._pool._http2 is True
    assert build_base_transport(http2=False, environ={})._pool._http2 is False


def test_pool_sized_from_parallel():
    assert build_base_transport(parallel=1, environ={})._pool._max_connections == 10
    assert build_base_transport(parallel=8, environ={})._pool._max_connections == 32


def test_no_router_without_a_proxy_and_router_with_one():
    assert isinstance(build_base_transport(environ={"NO_PROXY": "*"}), httpx.HTTPTransport)
    assert isinstance(build_base_transport(environ={"https_proxy": PROXY}), TransportRouter)


def test_missing_ca_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nope.pem"):
        build_base_transport(ca_cert=str(tmp_path / "nope.pem"), environ={})


def test_garbage_ca_file_is_a_usage_error(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="garbage.pem"):
        build_base_transport(ca_cert=str(garbage), environ={})


@respx.mock(using="httpcore")
def test_requests_without_timeout_get_the_default_and_others_keep_theirs(respx_mock):
    respx_mock.get("http://r.example/").respond(200)
    transport = build_base_transport(environ={})
    bare = httpx.Request("GET", "http://r.example/")
    transport.handle_request(bare)
    assert bare.extensions["timeout"] == DEFAULT_TIMEOUT.as_dict()
    custom = httpx.Timeout(3.0)
    with httpx.Client(transport=build_base_transport(environ={}), timeout=custom) as client:
        response = client.get("http://r.example/")
    assert response.request.extensions["timeout"] == custom.as_dict()


# --- real local servers ------------------------------------------------------------------------


class _Recording(http.server.BaseHTTPRequestHandler):
    """Answers 200 with the request line's target, so a test can tell proxy from direct;
    /bytes/N answers N bytes."""

    def do_GET(self) -> None:
        body = f"{self.server.server_name_tag} {self.path}".encode()
        if self.path.startswith("/bytes/"):
            body = bytes(range(256)) * (int(self.path.removeprefix("/bytes/")) // 256)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


@contextmanager
def _server(tag: str, tls_context: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    server.server_name_tag = tag
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_router_sends_through_proxy_except_no_proxy_hosts():
    with _server("proxy") as proxy_port, _server("direct") as direct_port:
        environ = {"HTTP_PROXY": f"http://127.0.0.1:{proxy_port}", "NO_PROXY": "127.0.0.1"}
        with httpx.Client(transport=build_base_transport(http2=False, environ=environ)) as client:
            proxied = client.get("http://registry.invalid/v2/")
            direct = client.get(f"http://127.0.0.1:{direct_port}/v2/")
    assert proxied.text == "proxy http://registry.invalid/v2/"
    assert direct.text == "direct /v2/"


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


def test_tls_verified_against_given_ca_and_refused_without(certificate_authority, tmp_path):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    with _server("tls", server_context) as port:
        url = f"https://127.0.0.1:{port}/v2/"
        trusted = build_base_transport(ca_cert=str(ca_file), environ={})
        with httpx.Client(transport=trusted) as client:
            assert client.get(url).text == "tls /v2/"
        with (
            httpx.Client(transport=build_base_transport(environ={})) as client,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(url)


def test_response_bodies_are_read_from_the_socket_in_large_steps(monkeypatch):
    """httpcore asks its connections for 64 KiB at a time; ours read READ_BYTES, which cut a
    registry copy's system calls and CPU (docs/performance.md)."""
    asked = []
    real_read = SyncStream.read

    def recording(stream, max_bytes, timeout=None):
        asked.append(max_bytes)
        return real_read(stream, max_bytes, timeout)

    monkeypatch.setattr(SyncStream, "read", recording)
    size = 3 * READ_BYTES
    with _server("big") as port:
        transport = build_base_transport(http2=False, environ={})
        with httpx.Client(transport=transport) as client:
            body = client.get(f"http://127.0.0.1:{port}/bytes/{size}")
    assert body.content == bytes(range(256)) * (size // 256)
    assert asked and set(asked) == {READ_BYTES}


def test_tls_records_that_have_arrived_are_read_together(certificate_authority, tmp_path):
    """A TLS read hands out one record (16 KiB at most); the records already waiting are
    taken with it, so a 256 MiB download passed through h11 and httpx in about 260 pieces
    instead of 16 384, at half the CPU (docs/performance.md)."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    size = 3 * READ_BYTES
    with _server("big", server_context) as port:
        transport = build_base_transport(ca_cert=str(ca_file), http2=False, environ={})
        with (
            httpx.Client(transport=transport) as client,
            client.stream("GET", f"https://127.0.0.1:{port}/bytes/{size}") as response,
        ):
            time.sleep(0.3)  # let records pile up in the socket's buffer
            pieces = list(response.iter_raw())
    assert b"".join(pieces) == bytes(range(256)) * (size // 256)
    assert max(len(piece) for piece in pieces) > TLS_RECORD_BYTES


def test_unusable_proxy_is_a_usage_error_without_its_password():
    transport = build_base_transport(environ={"HTTP_PROXY": "ftp://user:secret@proxy.example:21"})
    with pytest.raises(UsageError, match="HTTP_PROXY") as info:
        transport.handle_request(httpx.Request("GET", "http://r.example/v2/"))
    assert "secret" not in str(info.value)


# --- certs.d: CA and client certificates per host, --tls-verify=false --------------------------


def _server_context(ca: trustme.CA, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _host_dir(root, port: int, ca: trustme.CA | None = None, client=None, name="client"):
    """ROOT/127.0.0.1:PORT holding ca.crt and NAME.cert/NAME.key, as docker documents."""
    directory = root / f"127.0.0.1:{port}"
    directory.mkdir(parents=True)
    if ca is not None:
        ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    if client is not None:
        client.cert_chain_pems[0].write_to_path(str(directory / f"{name}.cert"))
        client.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return directory


def _get(transport: httpx.BaseTransport, url: str) -> str:
    with httpx.Client(transport=transport) as client:
        return client.get(url).text


def test_ca_from_the_hosts_certs_d_directory_only(certificate_authority, tmp_path):
    with _server("tls", _server_context(certificate_authority)) as port:
        url = f"https://127.0.0.1:{port}/v2/"
        root = tmp_path / "certs.d"
        _host_dir(root, port + 1, certificate_authority)  # another port: not this host
        with pytest.raises(UntrustedCertificateError, match=f"127.0.0.1:{port}/ca.crt"):
            _get(build_base_transport(certs_roots=[root], environ={}), url)
        _host_dir(root, port, certificate_authority)
        assert _get(build_base_transport(certs_roots=[root], environ={}), url) == "tls /v2/"
        environ = {"OCCYSTRAP_CERTS_DIRS": f"{tmp_path / 'absent'}:{root}"}
        assert _get(build_base_transport(environ=environ), url) == "tls /v2/"


def test_first_root_holding_the_host_wins(certificate_authority, tmp_path):
    with _server("tls", _server_context(certificate_authority)) as port:
        url = f"https://127.0.0.1:{port}/v2/"
        _host_dir(tmp_path / "first", port, trustme.CA())
        _host_dir(tmp_path / "second", port, certificate_authority)
        roots = [tmp_path / "first", tmp_path / "second"]
        with pytest.raises(UntrustedCertificateError):
            _get(build_base_transport(certs_roots=roots, environ={}), url)
        assert _get(build_base_transport(certs_roots=roots[::-1], environ={}), url) == "tls /v2/"


def test_client_certificate_from_the_hosts_directory(certificate_authority, tmp_path):
    client_ca = trustme.CA()
    client = client_ca.issue_cert("occystrap-client@example.com")
    with _server("mtls", _server_context(certificate_authority, client_ca)) as port:
        url = f"https://127.0.0.1:{port}/v2/"
        _host_dir(tmp_path / "without", port, certificate_authority)
        with pytest.raises(httpx.TransportError):
            _get(build_base_transport(certs_roots=[tmp_path / "without"], environ={}), url)
        _host_dir(tmp_path / "with", port, certificate_authority, client, name="client")
        transport = build_base_transport(certs_roots=[tmp_path / "with"], environ={})
        assert _get(transport, url) == "mtls /v2/"


@pytest.mark.parametrize("keep", ["client.cert", "client.key"])
def test_half_a_client_pair_is_a_usage_error_naming_it(certificate_authority, tmp_path, keep):
    client = trustme.CA().issue_cert("client@example.com")
    directory = _host_dir(tmp_path, 5000, certificate_authority, client)
    for path in directory.glob("client.*"):
        if path.name != keep:
            path.unlink()
    transport = build_base_transport(certs_roots=[tmp_path], environ={})
    with pytest.raises(UsageError, match=keep):
        transport.handle_request(httpx.Request("GET", "https://127.0.0.1:5000/v2/"))


def test_plain_http_and_other_hosts_ignore_certs_d(tmp_path):
    directory = _host_dir(tmp_path, 5000)
    (directory / "ca.crt").write_text("not a certificate\n")
    transport = build_base_transport(certs_roots=[tmp_path], environ={})
    assert isinstance(transport, TransportRouter)
    with _server("plain") as port:
        assert _get(transport, f"http://127.0.0.1:{port}/v2/") == "plain /v2/"
    with pytest.raises(UsageError, match="ca.crt"):
        transport.handle_request(httpx.Request("GET", "https://127.0.0.1:5000/v2/"))


def test_tls_verify_false_skips_verification_and_warns_once(
    certificate_authority, monkeypatch, caplog
):
    monkeypatch.setattr(transport_module, "_verification_off_warned", False)
    with _server("tls", _server_context(certificate_authority)) as port:
        url = f"https://127.0.0.1:{port}/v2/"
        with pytest.raises(UntrustedCertificateError):
            _get(build_base_transport(environ={}), url)
        with caplog.at_level("WARNING", logger="occystrap.middleware.transport"):
            for _ in range(2):
                unverified = build_base_transport(tls_verify=False, environ={})
                assert _get(unverified, url) == "tls /v2/"
    assert [record.getMessage() for record in caplog.records] == [
        "TLS certificate verification is off (--tls-verify=false): anyone on the network"
        " path can impersonate the registries"
    ]
