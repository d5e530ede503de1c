"""HTTP/2 and TLS trust with the real TLS registry, through our assembled client and the CLI."""

from __future__ import annotations

import pytest

from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from tests.integration.cli import assert_one_line_error, registry_flags
from tests.integration.pull_checks import assert_tar_is_image, pull_to_tar, seed_image
from tests.unit.test_startup import loaded_modules

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
def test_chain_negotiates_the_requested_http_version(registry_tls, http2, version):
    settings = ChainSettings(NetworkSettings(ca_cert=str(registry_tls.ca_cert), http2=http2))
    with build_client(settings) as client:
        response = client.get(f"{registry_tls.url}/v2/")
    assert response.status_code == 200
    assert response.http_version == version


@pytest.mark.parametrize(("flag", "h2_loaded"), [("--http2", True), ("--no-http2", False)])
def test_the_program_loads_http2_for_tls_only_when_it_may_negotiate_it(
    registry_tls, unique_repo, tmp_path, flag, h2_loaded
):
    """The occystrap program keeps httpcore's HTTP/2 code out until a request goes over TLS
    with HTTP/2 on; then it must be there for the h2 the registry negotiates (without it the
    command would fail importing it)."""
    seed_image(registry_tls, unique_repo, tmp_path)
    image = f"registry://{registry_tls.host}/{unique_repo}:v1"
    loaded = loaded_modules(*registry_flags(registry_tls), flag, "digest", image)
    assert "occystrap.registry.client" in loaded  # the probe really asked the registry
    assert ("h2.connection" in loaded) is h2_loaded


def test_pull_over_tls_with_ca_cert(registry_tls, unique_repo, tmp_path):
    seed_image(registry_tls, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    pull_to_tar(registry_flags(registry_tls), registry_tls.host, unique_repo, out)
    assert_tar_is_image(out, registry_tls, unique_repo)


def test_untrusted_certificate_is_a_one_line_error(registry_tls, unique_repo, tmp_path):
    seed_image(registry_tls, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    result = pull_to_tar(
        ["--retries", "0"],
        registry_tls.host,
        unique_repo,
        out,
        check=False,
    )
    assert_one_line_error(result, "certificate", registry_tls.host.split(":")[0], "--ca-cert")
    assert not out.exists()
