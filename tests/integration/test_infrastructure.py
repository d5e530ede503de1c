"""Prove the integration infrastructure itself before other tests lean on it."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import ssl
from pathlib import Path

import httpx
import jwt
import pytest
import zstandard

from tests.integration.conftest import BASIC_PASSWORD, BASIC_USERNAME
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    pull_with_skopeo,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)
from tests.integration.servers import RegistryServer, RegistryStartError
from tests.integration.token_server import SERVICE

pytestmark = pytest.mark.integration

REGISTRY_FIXTURES = ["registry_plain", "registry_basic", "registry_tls", "registry_token"]
BLOB_SIZE = 300_000


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _manifest(layout: Path, descriptor: dict) -> dict:
    return json.loads(_blob(layout, descriptor["digest"]))


@pytest.fixture(scope="module")
def pushed_blob(registry_plain, tmp_path_factory) -> tuple[str, str, bytes]:
    """A single-layer image on `registry_plain`: (repo, layer digest, layer bytes)."""
    layout = tmp_path_factory.mktemp("fault-layout")
    manifest = _manifest(layout, build_oci_layout(layout, [random_layer(BLOB_SIZE, seed=7)]))
    repo = "test/fault-proxy"
    push_with_skopeo(layout, registry_plain, repo, "v1")
    digest = manifest["layers"][0]["digest"]
    return repo, digest, _blob(layout, digest)


def _with_kid(token_server, kid: str) -> str:
    """A correctly signed token for a fresh scope whose header names the wrong key."""
    token = token_server.issue(token_server.username, ["repository:kid/only:pull"])
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, token_server.signing_key, algorithm="RS256", headers={"kid": kid})


# --- registries ---------------------------------------------------------------------------


def test_free_port_has_no_listener(free_port):
    assert 1024 <= free_port <= 65535
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{free_port}/v2/")


def test_registry_that_dies_reports_its_log(tmp_path, monkeypatch):
    server = RegistryServer(tmp_path)
    broken = {"version": "0.1", "storage": {"nosuchdriver": {}}}
    monkeypatch.setattr(server, "_config", lambda: {**broken, "http": {"addr": server.host}})
    with pytest.raises(RegistryStartError, match="nosuchdriver"):
        server.start()


def test_plain_registry_answers_v2(registry_plain):
    response = httpx.get(f"{registry_plain.url}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert registry_plain.host.startswith("127.0.0.1:")
    assert registry_plain.scheme == "http"
    assert registry_plain.username is None and registry_plain.ca_cert is None


def test_basic_registry_challenges_and_accepts_credentials(registry_basic):
    anonymous = httpx.get(f"{registry_basic.url}/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="test-realm"'
    wrong = httpx.get(f"{registry_basic.url}/v2/", auth=(BASIC_USERNAME, "wrong"))
    assert wrong.status_code == 401
    right = httpx.get(f"{registry_basic.url}/v2/", auth=(BASIC_USERNAME, BASIC_PASSWORD))
    assert right.status_code == 200


def test_tls_registry_negotiates_http2_and_trusts_only_its_ca(registry_tls):
    assert registry_tls.url.startswith("https://127.0.0.1:")
    assert (registry_tls.cert_dir / "ca.crt").read_bytes() == registry_tls.ca_cert.read_bytes()
    context = ssl.create_default_context(cafile=str(registry_tls.ca_cert))
    with httpx.Client(http2=True, verify=context) as client:
        response = client.get(f"{registry_tls.url}/v2/")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry_tls.url}/v2/")  # system trust store does not know our CA


def test_tls_registry_serves_localhost_name(registry_tls):
    with registry_tls.client() as client:
        response = client.get(f"https://localhost:{registry_tls.port}/v2/")
    assert response.status_code == 200


def test_token_registry_challenges_with_bearer_realm(registry_token):
    response = httpx.get(f"{registry_token.url}/v2/")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{registry_token.token_server.realm}"' in challenge
    assert f'service="{SERVICE}"' in challenge


def test_token_server_refuses_anonymous_and_wrong_password(registry_token):
    token_server = registry_token.token_server
    token_server.reset()
    params = {"service": SERVICE, "scope": "repository:any/repo:pull"}
    assert httpx.get(token_server.realm, params=params).status_code == 401
    wrong = httpx.get(token_server.realm, params=params, auth=(token_server.username, "nope"))
    assert wrong.status_code == 401
    assert token_server.count() == 0
    assert len(token_server.requests) == 2


def test_token_grants_only_requested_scope(registry_token):
    token_server = registry_token.token_server
    token_server.reset()
    scope = "repository:scoped/repo:pull"
    response = httpx.get(
        token_server.realm,
        params={"service": SERVICE, "scope": scope},
        auth=(token_server.username, token_server.password),
    )
    body = response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    bearer = {"Authorization": f"Bearer {body['token']}"}
    granted = httpx.get(f"{registry_token.url}/v2/scoped/repo/tags/list", headers=bearer)
    assert granted.status_code == 404  # authorised; the repository just does not exist yet
    other = httpx.get(f"{registry_token.url}/v2/other/repo/tags/list", headers=bearer)
    assert other.status_code == 401
    assert token_server.count(scope) == 1
    assert token_server.counts_by_scope() == {scope: 1}


def test_token_server_password_and_refresh_grants(registry_token):
    token_server = registry_token.token_server
    token_server.reset()
    form = {
        "grant_type": "password",
        "username": token_server.username,
        "password": token_server.password,
        "service": SERVICE,
        "scope": "repository:a/b:pull repository:c/d:pull,push",
        "client_id": "occystrap",
        "access_type": "offline",
    }
    first = httpx.post(token_server.realm, data=form).json()
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "service": SERVICE,
        "scope": "repository:a/b:pull",
        "client_id": "occystrap",
    }
    second = httpx.post(token_server.realm, data=refresh)
    assert second.status_code == 200 and "token" in second.json()
    refused = httpx.post(token_server.realm, data={**refresh, "refresh_token": "made-up"})
    assert refused.status_code == 401
    assert token_server.counts_by_scope() == {
        "repository:a/b:pull": 2,
        "repository:c/d:pull,push": 1,
    }
    assert [r.grant_type for r in token_server.requests] == [
        "password",
        "refresh_token",
        "refresh_token",
    ]


def test_registry_accepts_token_identified_by_kid_alone(registry_token):
    """Without x5c the registry must find the key by its libtrust id, proving our kid format."""
    token_server = registry_token.token_server
    token_server.include_x5c = False
    try:
        token = httpx.get(
            token_server.realm,
            params={"service": SERVICE, "scope": "repository:kid/only:pull"},
            auth=(token_server.username, token_server.password),
        ).json()["token"]
    finally:
        token_server.include_x5c = True
    header = jwt.get_unverified_header(token)
    assert "x5c" not in header
    assert re.fullmatch(r"[A-Z2-7]{4}(:[A-Z2-7]{4}){11}", header["kid"])
    bearer = {"Authorization": f"Bearer {token}"}
    response = httpx.get(f"{registry_token.url}/v2/kid/only/tags/list", headers=bearer)
    assert response.status_code == 404  # authorised: only the repository is missing
    bad_kid = httpx.get(
        f"{registry_token.url}/v2/kid/only/tags/list",
        headers={"Authorization": "Bearer " + _with_kid(token_server, "AAAA:" * 11 + "AAAA")},
    )
    assert bad_kid.status_code == 401


# --- images and skopeo --------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layout_layers_match_their_diff_ids(tmp_path, compression):
    files = {"etc/hello": b"hello\n", "big.bin": random_layer(10_000, seed=1)["random.bin"]}
    descriptor = build_oci_layout(tmp_path, [files], compression=compression)
    manifest = _manifest(tmp_path, descriptor)
    config = json.loads(_blob(tmp_path, manifest["config"]["digest"]))
    layer = _blob(tmp_path, manifest["layers"][0]["digest"])
    assert hashlib.sha256(layer).hexdigest() == manifest["layers"][0]["digest"][7:]
    decompress = {
        "gzip": gzip.decompress,
        "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
        "none": bytes,
    }[compression]
    tar_digest = "sha256:" + hashlib.sha256(decompress(layer)).hexdigest()
    assert config["rootfs"]["diff_ids"] == [tar_digest]
    assert config["history"][0]["created_by"] and config["config"]["Cmd"] == ["/bin/sh"]


def test_layout_is_deterministic(tmp_path):
    layers = [{"a": b"1"}, random_layer(5_000, seed=3)]
    first = build_oci_layout(tmp_path / "one", layers, config_overrides={"author": "me"})
    second = build_oci_layout(tmp_path / "two", layers, config_overrides={"author": "me"})
    assert first == second
    assert random_layer(100, seed=3) != random_layer(100, seed=4)


@pytest.mark.parametrize("registry_name", REGISTRY_FIXTURES)
def test_skopeo_push_and_inspect_each_registry(request, registry_name, tmp_path, unique_repo):
    registry = request.getfixturevalue(registry_name)
    descriptor = build_oci_layout(tmp_path, [{"a.txt": b"a"}, random_layer(20_000, seed=2)])
    manifest = _manifest(tmp_path, descriptor)
    push_with_skopeo(tmp_path, registry, unique_repo, "v1")
    raw = skopeo_inspect(registry, f"{unique_repo}:v1", raw=True)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["config"]["digest"] == manifest["config"]["digest"]
    assert len(raw["layers"]) == 2
    assert skopeo_inspect(registry, f"{unique_repo}:v1")["Labels"] == {"org.occystrap.test": "true"}


def test_token_server_counts_skopeo_fetches(registry_token, tmp_path, unique_repo):
    token_server = registry_token.token_server
    token_server.reset()
    build_oci_layout(tmp_path, [{"x": b"x"}])
    push_with_skopeo(tmp_path, registry_token, unique_repo, "v1")
    assert token_server.count(f"repository:{unique_repo}:pull,push") >= 1
    assert all(r.granted for r in token_server.requests)


def test_oci_format_and_zstd_push(registry_plain, tmp_path, unique_repo):
    build_oci_layout(tmp_path, [{"z": b"z" * 1000}], compression="zstd")
    push_with_skopeo(tmp_path, registry_plain, unique_repo, "v1", manifest_format="oci")
    raw = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"


@pytest.mark.parametrize(
    ("manifest_format", "list_type"),
    [
        (None, "application/vnd.oci.image.index.v1+json"),
        ("v2s2", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ],
)
def test_multiarch_push(registry_plain, tmp_path, unique_repo, manifest_format, list_type):
    platforms = {("linux", "amd64"): [{"f": b"amd"}], ("linux", "arm64"): [{"f": b"arm"}]}
    build_multiarch_layout(tmp_path / "layout", platforms)
    push_multiarch_with_skopeo(
        tmp_path / "layout", registry_plain, unique_repo, "v1", manifest_format=manifest_format
    )
    raw = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    assert raw["mediaType"] == list_type
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]
    pull_with_skopeo(registry_plain, f"{unique_repo}:v1", tmp_path / "back", multi_arch=True)
    assert (tmp_path / "back" / "index.json").exists()


# --- fault proxy --------------------------------------------------------------------------


def test_proxy_forwards_skopeo_push_and_pull(fault_proxy, registry_plain, tmp_path, unique_repo):
    descriptor = build_oci_layout(tmp_path / "src", [random_layer(BLOB_SIZE, seed=11)])
    plain = ["--dest-tls-verify=false", "--dest-no-creds"]
    target = f"docker://{fault_proxy.host}/{unique_repo}:v1"
    run_skopeo("copy", "--quiet", "--format=v2s2", *plain, f"oci:{tmp_path / 'src'}", target)
    methods = {r.method for r in fault_proxy.requests}
    assert {"POST", "PUT", "HEAD"} <= methods
    assert all(r.action == "forwarded" for r in fault_proxy.requests)
    config_digest = _manifest(tmp_path / "src", descriptor)["config"]["digest"]
    assert skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)["config"]["digest"] == (
        config_digest
    )


def test_proxy_fail_next_503_then_passes(fault_proxy):
    fault_proxy.fail_next(2, status=503, path=r"^/v2/$")
    with httpx.Client(base_url=fault_proxy.url) as client:
        statuses = [client.get("/v2/").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [r.action for r in fault_proxy.requests] == ["failed", "failed", "forwarded"]


def test_proxy_fail_429_with_retry_after_only_on_matching_paths(fault_proxy, pushed_blob):
    repo, digest, _ = pushed_blob
    fault_proxy.fail_next(1, status=429, retry_after="1", path="/manifests/")
    with httpx.Client(base_url=fault_proxy.url) as client:
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
        limited = client.get(f"/v2/{repo}/manifests/v1")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        assert client.get(f"/v2/{repo}/manifests/v1", headers=accept).status_code == 200
        fault_proxy.fail_next(1, status=503, method="PUT")
        assert client.get("/v2/").status_code == 200


def test_proxy_cut_after_then_range_resume(fault_proxy, pushed_blob):
    repo, digest, blob = pushed_blob
    cut = 100_000
    fault_proxy.cut_after("/blobs/", cut)
    received = bytearray()
    with httpx.Client(base_url=fault_proxy.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: SIM117 - bytes read before raise
            with client.stream("GET", f"/v2/{repo}/blobs/{digest}") as response:
                assert response.headers["Content-Length"] == str(len(blob))
                for chunk in response.iter_raw():
                    received += chunk
        assert bytes(received) == blob[:cut]
        rest = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={cut}-"})
    assert rest.status_code == 206
    assert hashlib.sha256(bytes(received) + rest.content).hexdigest() == digest[7:]
    assert fault_proxy.range_headers == [f"bytes={cut}-"]
    assert [r.action for r in fault_proxy.requests] == ["cut", "forwarded"]


def test_proxy_redirects_blobs_to_blob_host(fault_proxy, blob_host, pushed_blob):
    repo, digest, blob = pushed_blob
    fault_proxy.redirect_blobs_to(blob_host)
    with httpx.Client(base_url=fault_proxy.url) as client:
        redirect = client.get(
            f"/v2/{repo}/blobs/{digest}", headers={"Authorization": "Bearer secret"}
        )
        assert redirect.status_code == 307
        location = redirect.headers["Location"]
        assert location.startswith(f"{blob_host.url}/v2/{repo}/blobs/{digest}?")
        # Following without credentials, as a careful client must:
        served = client.get(location, headers={"Range": "bytes=0-9"})
        assert served.status_code == 206 and served.content == blob[:10]
        full = client.get(location)
    assert hashlib.sha256(full.content).hexdigest() == digest[7:]
    assert [r.action for r in fault_proxy.requests] == ["redirected"]
    assert len(blob_host.requests) == 2
    assert all("authorization" not in r.headers for r in blob_host.requests)
    assert blob_host.range_headers == ["bytes=0-9"]
    assert httpx.get(f"{blob_host.url}/v2/").status_code == 404  # blob host serves blobs only


def test_proxy_reset_clears_faults_and_records(fault_proxy, blob_host, pushed_blob):
    repo, digest, _ = pushed_blob
    fault_proxy.fail_next(5)
    fault_proxy.redirect_blobs_to(blob_host)
    assert httpx.get(f"{fault_proxy.url}/v2/").status_code == 503
    fault_proxy.reset()
    assert fault_proxy.requests == []
    assert httpx.get(f"{fault_proxy.url}/v2/").status_code == 200
    assert httpx.get(f"{fault_proxy.url}/v2/{repo}/blobs/{digest}").status_code == 200


def test_proxy_streams_chunked_upload_and_drains_failed_ones(fault_proxy, unique_repo):
    data = random_layer(500_000, seed=5)["random.bin"]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def chunks():
        for start in range(0, len(data), 70_000):
            yield data[start : start + 70_000]

    fault_proxy.fail_next(1, status=503, method="PATCH")
    with httpx.Client(base_url=fault_proxy.url) as client:
        session = client.post(f"/v2/{unique_repo}/blobs/uploads/").headers["Location"]
        assert session.startswith(fault_proxy.url)  # the registry builds URLs from our Host
        assert client.patch(session, content=chunks()).status_code == 503
        patched = client.patch(session, content=chunks())
        assert patched.status_code == 202
        done = client.put(f"{patched.headers['Location']}&digest={digest}")
        assert done.status_code == 201
        assert client.get(f"/v2/{unique_repo}/blobs/{digest}").content == data
    patches = fault_proxy.requests_matching("/blobs/uploads/", method="PATCH")
    assert [p.headers["transfer-encoding"] for p in patches] == ["chunked", "chunked"]
    assert [p.action for p in patches] == ["failed", "forwarded"]
