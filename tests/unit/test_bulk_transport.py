"""The base transport sends blob bodies over HTTP/1.1 and everything else over HTTP/2."""

import httpx
import pytest
import respx

from occystrap.middleware.transport import build_base_transport, is_bulk_transfer

BASE = "https://r.example/v2/team/app"
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "method, url, bulk",
    [
        ("GET", f"{BASE}/blobs/{DIGEST}", True),
        ("PUT", f"{BASE}/blobs/uploads/1234?digest={DIGEST}", True),
        ("PATCH", f"{BASE}/blobs/uploads/1234", True),
        ("HEAD", f"{BASE}/blobs/{DIGEST}", False),
        ("POST", f"{BASE}/blobs/uploads/", False),
        ("GET", f"{BASE}/blobs/uploads/1234", False),
        ("DELETE", f"{BASE}/blobs/uploads/1234", False),
        ("GET", f"{BASE}/manifests/latest", False),
        ("PUT", f"{BASE}/manifests/latest", False),
        ("GET", "https://auth.example/token?scope=repository:team/app:pull", False),
    ],
)
def test_is_bulk_transfer(method, url, bulk):
    assert is_bulk_transfer(httpx.Request(method, url)) is bulk


def test_http2_transport_has_an_http1_bulk_pool_and_http1_has_none():
    transport = build_base_transport(http2=True, environ={})
    assert transport._pool._http2 is True
    assert transport._bulk._pool._http2 is False
    assert build_base_transport(http2=False, environ={})._bulk is None


@respx.mock(using="httpcore")
def test_blob_requests_use_the_bulk_pool_and_api_calls_do_not(respx_mock):
    respx_mock.get(url__startswith=BASE).respond(200, content=b"x")
    transport = build_base_transport(http2=True, environ={})
    pools_used = []
    for pool in (transport._pool, transport._bulk._pool):
        original = pool.handle_request

        def recording(request, original=original, pool=pool):
            pools_used.append("bulk" if pool is transport._bulk._pool else "api")
            return original(request)

        pool.handle_request = recording
    with httpx.Client(transport=transport) as client:
        client.get(f"{BASE}/manifests/latest")
        client.get(f"{BASE}/blobs/{DIGEST}")
    assert pools_used == ["api", "bulk"]


def test_closing_closes_both_pools(monkeypatch):
    transport = build_base_transport(http2=True, environ={})
    closed = []
    monkeypatch.setattr(transport._pool, "close", lambda: closed.append("api"))
    monkeypatch.setattr(transport._bulk._pool, "close", lambda: closed.append("bulk"))
    transport.close()
    assert sorted(closed) == ["api", "bulk"]
