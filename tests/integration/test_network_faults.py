"""Issue 8, network layer: every fault a hostile network or registry can produce ends in either
the exact image or one line naming what went wrong, never a traceback, leak or endless wait."""

from __future__ import annotations

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.fault_proxy import BlobHost, FaultProxy
from tests.integration.pull_checks import pull_to_tar, seed_image

pytestmark = pytest.mark.integration


def _copy_through(proxy, registry, repo: str, *flags: str, check: bool = False):
    """Copy REPO:v1 from `registry` to REPO-copy:v1 pushed through `proxy`."""
    return run_occystrap(
        "--insecure",
        *flags,
        "process",
        f"registry://{registry.host}/{repo}:v1",
        f"registry://{proxy.host}/{repo}-copy:v1",
        check=check,
    )


@pytest.mark.parametrize(
    ("status", "path", "method", "said"),
    [
        (403, r"/manifests/", "PUT", "UNKNOWN injected fault"),
        (403, r"/blobs/uploads/$", "POST", "UNKNOWN injected fault"),
        (500, r"/blobs/sha256:", "HEAD", "raise --retries"),  # a HEAD answer has no body
    ],
    ids=["manifest-put-403", "upload-post-403", "blob-head-500"],
)
def test_push_errors_carry_the_registrys_message(
    status, path, method, said, fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.fail_next(50, status=status, path=path, method=method)
    result = _copy_through(fault_proxy, registry_plain, unique_repo, "--retries", "0")
    assert_one_line_error(result, f"HTTP {status}", said, fault_proxy.host)


def test_failed_upload_restarts_in_a_fresh_session(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.fail_next(1, status=500, path=r"/blobs/uploads/.+", method="PUT")
    _copy_through(fault_proxy, registry_plain, unique_repo, "--retries", "0", check=True)
    puts = fault_proxy.requests_matching(r"/blobs/uploads/.+", method="PUT")
    sessions = fault_proxy.requests_matching(r"/blobs/uploads/$", method="POST")
    assert puts[0].action == "failed"
    assert all(r.action == "forwarded" for r in puts[1:])
    # Two blobs (config and one pushed layer at least) plus the restarted session.
    assert len(sessions) == len(puts)
    assert len(sessions) >= 3


def test_origin_token_never_reaches_a_redirect_target_naming_the_same_realm(
    registry_token, unique_repo, tmp_path
):
    """The blob host answers 401 with the origin's realm: it must get its own token (here: none,
    as it has no credentials of its own), never the one fetched for the origin."""
    seed_image(registry_token, unique_repo, tmp_path)
    with FaultProxy(registry_token.url) as origin, BlobHost(registry_token.url) as cdn:
        origin.redirect_blobs_to(cdn)
        credentials = ["--username", registry_token.username, "--password", registry_token.password]
        result = pull_to_tar(
            ["--insecure", *credentials], origin.host, unique_repo, tmp_path / "x.tar", check=False
        )
        cdn_requests, origin_manifests = cdn.requests, origin.requests_matching(r"/manifests/")
    assert cdn_requests, "blobs were not redirected"
    assert [r.headers["authorization"] for r in cdn_requests if "authorization" in r.headers] == []
    assert any("authorization" in r.headers for r in origin_manifests)
    assert_one_line_error(result, "could not get a token")
    assert not (tmp_path / "x.tar").exists()
