"""Pulls through the real CLI survive real network faults and still yield the exact image."""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.fault_proxy import BlobHost, FaultProxy
from tests.integration.images import random_layer
from tests.integration.pull_checks import TAG, assert_tar_is_image, pull_to_tar, seed_image

pytestmark = pytest.mark.integration

LAYER_SIZE = 3_000_000
RANGE_START = re.compile(r"^bytes=(\d+)-$")


def _blob_path(layer_digest: str) -> str:
    return rf"/blobs/{re.escape(layer_digest)}"


def test_cut_blob_resumes_from_where_it_stopped(fault_proxy, registry_plain, unique_repo, tmp_path):
    original = seed_image(
        registry_plain, unique_repo, tmp_path, [random_layer(LAYER_SIZE, 7), {"a": b"a"}]
    )
    big_layer = original["Layers"][0]
    cut_at = int(LAYER_SIZE * 0.4)
    fault_proxy.cut_after(_blob_path(big_layer), cut_at)
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    gets = fault_proxy.requests_matching(_blob_path(big_layer), method="GET")
    assert [r.action for r in gets] == ["cut", "forwarded"]
    resumed_from = RANGE_START.match(gets[1].headers["range"])
    assert resumed_from is not None, gets[1].headers
    assert 0 < int(resumed_from[1]) <= cut_at
    assert "range" not in gets[0].headers


def test_503s_are_retried_and_counted_in_the_summary(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.fail_next(2, status=503, path=r"/manifests/")
    fault_proxy.fail_next(1, status=503, path=r"/blobs/")
    out = tmp_path / "image.tar"
    result = pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    assert [r.action for r in fault_proxy.requests].count("failed") == 3
    summary = result.stderr.strip().splitlines()[-1]
    assert "3 retries" in summary, result.stderr


def test_429_waits_for_retry_after(fault_proxy, registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.fail_next(1, status=429, retry_after="1", path=r"/manifests/", method="GET")
    out = tmp_path / "image.tar"
    result = pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    manifest_gets = fault_proxy.requests_matching(r"/manifests/", method="GET")
    assert [r.action for r in manifest_gets[:2]] == ["failed", "forwarded"]
    waited = manifest_gets[1].at - manifest_gets[0].at
    assert 0.9 <= waited < 10, waited
    assert re.search(r"\b1 retr(y|ies)\b", result.stderr.splitlines()[-1]), result.stderr


def test_blobs_redirected_to_another_host(
    fault_proxy, blob_host, registry_plain, unique_repo, tmp_path
):
    original = seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.redirect_blobs_to(blob_host)
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    served = {
        r.path.split("?")[0].rsplit("/", 1)[1] for r in blob_host.requests_matching("/blobs/")
    }
    assert set(original["Layers"]) <= served
    assert all(r.action == "forwarded" for r in blob_host.requests)


def _assert_no_credentials_leave_the_registry(
    registry, upstream_authorization: str, repo: str, tmp_path
) -> None:
    """Pull with --username/--password through a proxy that redirects blobs to a BlobHost."""
    seed_image(registry, repo, tmp_path)
    upstream = {"Authorization": upstream_authorization}
    with (
        FaultProxy(registry.url) as proxy,
        BlobHost(registry.url, upstream_headers=upstream) as cdn,
    ):
        proxy.redirect_blobs_to(cdn)
        out = tmp_path / "image.tar"
        pull_to_tar(
            ["--insecure", "--username", registry.username, "--password", registry.password],
            proxy.host,
            repo,
            out,
        )
        assert_tar_is_image(out, registry, repo)
        cdn_requests = cdn.requests
        manifest_requests = proxy.requests_matching(r"/manifests/", method="GET")
    assert len(cdn_requests) >= 2  # config and layers came from the second host
    assert [r for r in cdn_requests if "authorization" in r.headers] == []
    assert any("authorization" in r.headers for r in manifest_requests)


def test_basic_credentials_never_reach_the_blob_host(registry_basic, unique_repo, tmp_path):
    secret = f"{registry_basic.username}:{registry_basic.password}"
    basic = f"Basic {base64.b64encode(secret.encode()).decode()}"
    _assert_no_credentials_leave_the_registry(registry_basic, basic, unique_repo, tmp_path)


def test_bearer_token_never_reaches_the_blob_host(registry_token, unique_repo, tmp_path):
    token = registry_token.token_server.issue("blob-host", [f"repository:{unique_repo}:pull"])
    _assert_no_credentials_leave_the_registry(
        registry_token, f"Bearer {token}", unique_repo, tmp_path
    )


def test_rate_limit_bounds_every_one_second_window(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    layers = [random_layer(2_000, seed) for seed in range(11)]
    seed_image(registry_plain, unique_repo, tmp_path, layers)
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure", "--rate-limit", "5"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    times = sorted(r.at for r in fault_proxy.requests)
    assert len(times) >= 12
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 6, times


def test_a_redirect_to_an_untrusted_certificate_is_said_once(
    fault_proxy, registry_plain, registry_tls, unique_repo, tmp_path
):
    """The untrusted-certificate error of a redirect target: one line, its text said once."""
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.redirect_blobs_to(SimpleNamespace(url=registry_tls.url))
    out = tmp_path / "image.tar"
    result = run_occystrap(
        "--insecure",
        "process",
        f"registry://{fault_proxy.host}/{unique_repo}:{TAG}",
        f"tar://{out}",
        check=False,
    )
    assert_one_line_error(result, f"the TLS certificate of {registry_tls.host} is not trusted")
    assert result.stderr.count("is not trusted") == 1, result.stderr
    assert result.stderr.count("--ca-cert") == 1, result.stderr
    assert not out.exists()
