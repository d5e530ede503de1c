"""--mirror and --middleware through the real CLI against real registries."""

from __future__ import annotations

import base64
import json

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.fault_proxy import CountingListener, FaultProxy
from tests.integration.pull_checks import assert_tar_is_image, pull_to_tar, seed_image

pytestmark = pytest.mark.integration


def _docker_config_env(tmp_path, registry) -> dict[str, str]:
    """A DOCKER_CONFIG holding `registry`'s own credentials, as a user of that mirror would have."""
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    secret = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {registry.host: {"auth": secret}}})
    )
    return {"DOCKER_CONFIG": str(config_dir), "REGISTRY_AUTH_FILE": ""}


def test_image_only_on_the_mirror_is_served_by_it(
    fault_proxy, registry_basic, unique_repo, tmp_path
):
    """The mirror authenticates with its own credentials; the origin is never asked for blobs."""
    seed_image(registry_basic, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    flags = [
        "--insecure",
        # Origin credentials that the mirror would refuse: the pull only works with the mirror's.
        *("--username", "origin-user", "--password", "origin-only-secret"),
        "--mirror",
        f"{fault_proxy.host}={registry_basic.url}",
    ]
    pull_to_tar(
        flags, fault_proxy.host, unique_repo, out, env=_docker_config_env(tmp_path, registry_basic)
    )
    assert_tar_is_image(out, registry_basic, unique_repo)
    assert fault_proxy.requests_matching(r"/blobs/") == []


@pytest.mark.parametrize("image_on_mirror", [False, True], ids=["falls-through", "mirror-serves"])
def test_origin_credentials_never_reach_the_mirror(
    image_on_mirror, registry_basic, registry_plain, unique_repo, tmp_path
):
    """Origin behind a proxy with --username; the mirror records every header it is sent."""
    seed_image(registry_basic, unique_repo, tmp_path)
    if image_on_mirror:
        seed_image(registry_plain, unique_repo, tmp_path)
    with FaultProxy(registry_basic.url) as origin, FaultProxy(registry_plain.url) as mirror:
        out = tmp_path / "image.tar"
        flags = [
            "--insecure",
            *("--username", registry_basic.username, "--password", registry_basic.password),
            "--mirror",
            f"{origin.host}={mirror.url}",
        ]
        pull_to_tar(flags, origin.host, unique_repo, out)
        assert_tar_is_image(out, registry_basic, unique_repo)
        mirror_requests, origin_blobs = mirror.requests, origin.requests_matching(r"/blobs/")
    assert mirror_requests, "the mirror was never tried"
    assert [r for r in mirror_requests if "authorization" in r.headers] == []
    if image_on_mirror:
        assert origin_blobs == []
        assert len(mirror.requests_matching(r"/blobs/", method="GET")) >= 2
    else:
        assert len(origin_blobs) >= 2


def test_dead_mirror_costs_one_connection(fault_proxy, registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    with CountingListener() as dead_mirror:
        flags = ["--insecure", "--mirror", f"{fault_proxy.host}={dead_mirror.url}"]
        pull_to_tar(flags, fault_proxy.host, unique_repo, out)
        accepts = dead_mirror.accepts
    assert_tar_is_image(out, registry_plain, unique_repo)
    assert accepts == 1


def test_header_plugin_reaches_every_request(
    fault_proxy, blob_host, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    fault_proxy.redirect_blobs_to(blob_host)
    out = tmp_path / "image.tar"
    flags = ["--insecure", "--middleware", "header:X-Pull-Through=yes"]
    pull_to_tar(flags, fault_proxy.host, unique_repo, out)
    assert_tar_is_image(out, registry_plain, unique_repo)
    seen = fault_proxy.requests + blob_host.requests
    assert blob_host.requests, "blobs were not redirected"
    assert [r.headers.get("x-pull-through") for r in seen] == ["yes"] * len(seen)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [("nope", ["nope", "header"]), ("header", ["header", "NAME=VALUE"])],
)
def test_bad_middleware_is_a_one_line_error(spec, fragments, free_port, tmp_path):
    result = run_occystrap(
        "--insecure",
        "--middleware",
        spec,
        "process",
        f"registry://127.0.0.1:{free_port}/some/image:v1",
        f"tar://{tmp_path / 'x.tar'}",
        check=False,
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x.tar").exists()


def test_a_mirror_serving_another_manifest_for_a_digest_falls_through_to_the_origin(
    registry_plain, unique_repo, tmp_path
):
    """Digest-pinned manifests are checked like configs: one that fails its digest is
    fetched again from the origin, without the mirror that served it."""
    seed_image(registry_plain, unique_repo, tmp_path)
    seed_image(registry_plain, f"{unique_repo}-other", tmp_path, [{"other": b"other"}])
    ref = f"{registry_plain.host}/{unique_repo}"
    digest = run_occystrap("--insecure", "digest", f"registry://{ref}:v1").stdout.strip()
    other = run_occystrap(
        "--insecure", "manifest", f"registry://{registry_plain.host}/{unique_repo}-other:v1"
    ).stdout.encode()
    with FaultProxy(registry_plain.url) as mirror:
        mirror.answer_next(5, other, path=r"/manifests/sha256:", method="GET")
        out = tmp_path / "pinned.tar"
        run_occystrap(
            "--insecure",
            "--mirror",
            f"{registry_plain.host}={mirror.url}",
            "process",
            f"registry://{ref}@{digest}",
            f"tar://{out}",
        )
        assert [r.action for r in mirror.requests_matching(r"/manifests/")] == ["answered"]
    assert_tar_is_image(out, registry_plain, unique_repo)
