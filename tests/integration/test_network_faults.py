"""Issue 8, network layer: every fault a hostile network or registry can produce ends in either
the exact image or one line naming what went wrong, never a traceback, leak or endless wait."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.fault_proxy import BlobHost, BodyFault, FaultProxy
from tests.integration.images import random_layer, skopeo_inspect
from tests.integration.pull_checks import assert_tar_is_image, pull_to_tar, seed_image

pytestmark = pytest.mark.integration

LAYER_SIZE = 3_000_000


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


@pytest.mark.parametrize(
    "fault",
    ["patch-500", "patch-hang-up"],
)
def test_failed_chunked_upload_restarts_in_a_fresh_session(
    fault, fault_proxy, registry_plain, unique_repo, tmp_path
):
    """A registry that takes only chunked uploads: one PATCH answering 500, or a connection
    dropped mid-PATCH, restarts the upload in a new session as a monolithic upload would."""
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.refuse_monolithic_uploads()
    if fault == "patch-500":
        fault_proxy.fail_next(1, status=500, path=r"/blobs/uploads/.+", method="PATCH")
    else:
        fault_proxy.hang_up_next(1, path=r"/blobs/uploads/.+", method="PATCH")
    _copy_through(fault_proxy, registry_plain, unique_repo, "--retries", "0", check=True)
    patches = fault_proxy.requests_matching(r"/blobs/uploads/.+", method="PATCH")
    assert patches[0].action in ("failed", "hung up")
    assert all(r.action == "forwarded" for r in patches[1:])
    assert skopeo_inspect(registry_plain, f"{unique_repo}-copy:v1")["Layers"]


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


# --- bodies: cut, stalled, trickled, oversized, corrupt ------------------------------------


def _seed_with_config(registry, repo: str, tmp_path) -> tuple[str, str]:
    """Seed REPO:v1; return (config digest, first layer digest)."""
    seed_image(registry, repo, tmp_path, [random_layer(LAYER_SIZE, 3), {"etc/motd": b"hi\n"}])
    manifest = skopeo_inspect(registry, f"{repo}:v1", raw=True)
    return manifest["config"]["digest"], manifest["layers"][0]["digest"]


def _blob(digest: str) -> str:
    return rf"/blobs/{re.escape(digest)}"


def test_manifest_and_config_cut_mid_body_are_fetched_again(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    config, _ = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.cut_after(r"/manifests/", 20)
    fault_proxy.cut_after(_blob(config), 10)
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    manifest_gets = fault_proxy.requests_matching(r"/manifests/", method="GET")
    assert [r.action for r in manifest_gets][:2] == ["cut", "forwarded"]
    config_gets = fault_proxy.requests_matching(_blob(config), method="GET")
    assert [r.action for r in config_gets] == ["cut", "forwarded"]


def test_a_stalled_manifest_body_is_retried_after_the_read_timeout(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(r"/manifests/", BodyFault("stalled", cut_bytes=20, stall_seconds=60))
    out = tmp_path / "image.tar"
    started = time.monotonic()
    pull_to_tar(["--insecure", "--timeout", "1"], fault_proxy.host, unique_repo, out)
    assert time.monotonic() - started < 20
    assert_tar_is_image(out, registry_plain, unique_repo)
    actions = [r.action for r in fault_proxy.requests_matching(r"/manifests/", method="GET")]
    assert actions[:2] == ["stalled", "forwarded"]


def test_a_trickling_server_is_abandoned_at_the_deadline(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(r"/manifests/", BodyFault("trickled", trickle_seconds=0.2), times=50)
    out = tmp_path / "image.tar"
    started = time.monotonic()
    result = pull_to_tar(
        ["--insecure", "--timeout", "2", "--deadline", "3"],
        fault_proxy.host,
        unique_repo,
        out,
        check=False,
    )
    assert time.monotonic() - started < 20
    assert_one_line_error(result, fault_proxy.host, "--deadline")
    assert not out.exists()


def test_a_trickling_layer_is_cut_and_resumed(fault_proxy, registry_plain, unique_repo, tmp_path):
    _, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(_blob(layer), BodyFault("trickled", trickle_seconds=0.1))
    out = tmp_path / "image.tar"
    started = time.monotonic()
    pull_to_tar(["--insecure", "--timeout", "1"], fault_proxy.host, unique_repo, out)
    assert time.monotonic() - started < 20
    assert_tar_is_image(out, registry_plain, unique_repo)
    gets = fault_proxy.requests_matching(_blob(layer), method="GET")
    assert [r.action for r in gets] == ["trickled", "forwarded"]


def test_a_layer_longer_than_declared_is_stopped_at_once(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    _, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    extra = 200_000_000
    fault_proxy.spoil_body(_blob(layer), BodyFault("overlong", extra_bytes=extra), times=5)
    out = tmp_path / "image.tar"
    result = pull_to_tar(["--insecure", "--debug"], fault_proxy.host, unique_repo, out, check=False)
    received = [int(n) for n in re.findall(rf"{re.escape(layer)}.*? (\d+) bytes", result.stderr)]
    assert received and max(received) < LAYER_SIZE + 4 * 1024 * 1024, received
    assert result.returncode != 0
    assert "more than the" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_a_resume_answered_with_the_wrong_range_restarts_from_zero(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    _, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.cut_after(_blob(layer), LAYER_SIZE // 2)
    fault_proxy.spoil_body(_blob(layer), BodyFault("misranged", content_range="bytes 0-9/10"))
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    gets = fault_proxy.requests_matching(_blob(layer), method="GET")
    assert [r.action for r in gets] == ["cut", "misranged", "forwarded"]
    assert "range" in gets[1].headers and "range" not in gets[2].headers


def test_a_layer_corrupted_in_every_transfer_fails_in_one_line(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    _, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(_blob(layer), BodyFault("corrupted", flip_byte=1000), times=5)
    out = tmp_path / "image.tar"
    result = pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out, check=False)
    assert_one_line_error(result, layer, "hashes to")
    assert not out.exists()


def test_a_layer_corrupted_once_in_transit_is_fetched_again(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    _, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(_blob(layer), BodyFault("corrupted", flip_byte=1000))
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    gets = fault_proxy.requests_matching(_blob(layer), method="GET")
    assert [r.action for r in gets] == ["corrupted", "forwarded"]
    assert_tar_is_image(out, registry_plain, unique_repo)


def test_a_config_corrupted_once_is_fetched_again(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    config, _ = _seed_with_config(registry_plain, unique_repo, tmp_path)
    fault_proxy.spoil_body(_blob(config), BodyFault("corrupted", flip_byte=3))
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    gets = fault_proxy.requests_matching(_blob(config), method="GET")
    assert [r.action for r in gets] == ["corrupted", "forwarded"]


@pytest.mark.parametrize(
    "which",
    ["config", "layer"],
)
def test_a_mirror_serving_a_corrupt_blob_falls_through_to_the_origin(
    which, fault_proxy, registry_plain, unique_repo, tmp_path
):
    config, layer = _seed_with_config(registry_plain, unique_repo, tmp_path)
    blob = config if which == "config" else layer
    with FaultProxy(registry_plain.url) as mirror:
        mirror.spoil_body(_blob(blob), BodyFault("corrupted", flip_byte=10), times=50)
        out = tmp_path / "image.tar"
        flags = ["--insecure", "--mirror", f"{fault_proxy.host}={mirror.url}"]
        pull_to_tar(flags, fault_proxy.host, unique_repo, out)
        mirror_gets = mirror.requests_matching(_blob(blob), method="GET")
    assert_tar_is_image(out, registry_plain, unique_repo)
    assert [r.action for r in mirror_gets] == ["corrupted"]
    origin_gets = fault_proxy.requests_matching(_blob(blob), method="GET")
    assert [r.action for r in origin_gets] == ["forwarded"]


# --- messages: redirect loops, plain HTTP to TLS, refused connections ------------------------


def test_a_redirect_loop_is_a_one_line_error(fault_proxy, registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.redirect_blobs_to(fault_proxy)
    out = tmp_path / "image.tar"
    result = pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out, check=False)
    assert_one_line_error(result, "too many redirects", fault_proxy.host)
    assert not out.exists()


def test_insecure_against_a_tls_registry_says_drop_insecure(registry_tls, unique_repo, tmp_path):
    result = run_occystrap(
        "--insecure", "info", f"registry://{registry_tls.host}/{unique_repo}:v1", check=False
    )
    assert_one_line_error(result, registry_tls.host, "drop --insecure")


def test_a_refused_connection_names_host_and_port(free_port, tmp_path):
    result = run_occystrap(
        "--insecure",
        "--retries",
        "0",
        "info",
        f"registry://127.0.0.1:{free_port}/a/b:v1",
        check=False,
    )
    assert_one_line_error(result, f"127.0.0.1:{free_port}", "ConnectError")


@pytest.mark.parametrize(
    ("flags", "source", "said"),
    [
        (["--rate-limit", "1e-300"], "registry://127.0.0.1:5000/a/b:v1", "bad rate limit"),
        (["--rate-limit", "inf"], "registry://127.0.0.1:5000/a/b:v1", "bad rate limit"),
        ([], "registry://127.0.0.1:99999/a/b:v1", "invalid port 99999"),
        (["--timeout", "0"], "registry://127.0.0.1:5000/a/b:v1", "value for '--timeout'"),
        (["--deadline", "-1"], "registry://127.0.0.1:5000/a/b:v1", "value for '--deadline'"),
    ],
)
def test_absurd_network_settings_are_one_line_usage_errors(flags, source, said):
    result = run_occystrap(*flags, "info", source, check=False)
    assert_one_line_error(result, said)


def test_a_redirect_to_a_file_url_is_refused_without_retry_advice(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.answer_next(
        10, b"", path=r"/manifests/", headers={"Location": "file:///etc/passwd"}, status=307
    )
    out = tmp_path / "out.tar"
    result = pull_to_tar(["--insecure"], fault_proxy.host, unique_repo, out, check=False)
    assert_one_line_error(result, "file://", "refusing to follow")
    assert "--retries" not in result.stderr and "network error" not in result.stderr
    assert not out.exists()
