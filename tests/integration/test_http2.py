"""HTTP/2 and TLS trust with the real TLS registry, through our assembled client and the CLI."""

from __future__ import annotations

import pytest

from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from tests.integration.cli import assert_one_line_error, registry_flags
from tests.integration.pull_checks import assert_tar_is_image, pull_to_tar, seed_image

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
def test_chain_negotiates_the_requested_http_version(registry_tls, http2, version):
    settings = ChainSettings(NetworkSettings(ca_cert=str(registry_tls.ca_cert), http2=http2))
    with build_client(settings) as client:
        response = client.get(f"{registry_tls.url}/v2/")
    assert response.status_code == 200
    assert response.http_version == version


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
