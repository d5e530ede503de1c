"""Cloud registry credentials through the installed plug-in distributions: ECR tokens from
moto's ECR (SigV4-checked), accepted by a real registry that takes that password."""

from __future__ import annotations

import os

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.conftest import AZURE_AD_TOKEN, AZURE_CLIENT_SECRET, GOOGLE_ACCESS_TOKEN
from tests.integration.images import build_oci_layout, random_layer, skopeo_inspect


def _plugin_env(cloud_plugins, **extra: str) -> dict[str, str]:
    from tests.integration.cli import REPO_ROOT

    return {"PYTHONPATH": f"{cloud_plugins}{os.pathsep}{REPO_ROOT}", **extra}


def test_ecr_token_from_moto_pushes_to_registry(
    moto, registry_ecr, cloud_plugins, unique_repo, tmp_path
):
    layout = tmp_path / "layout"
    descriptor = build_oci_layout(layout, [random_layer(64 * 1024, seed=20)])
    result = run_occystrap(
        "--insecure",
        "--debug",
        "--middleware",
        f"ecr:hosts={registry_ecr.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_ecr.host}/{unique_repo}:v1",
        env=_plugin_env(cloud_plugins, **moto.env()),
    )
    assert "EcrCredentials" in result.stderr  # the chain holds the installed plug-in
    # The token travels as a password: never in a log line, even at --debug.
    assert registry_ecr.password not in result.stderr
    raw = skopeo_inspect(registry_ecr, f"{unique_repo}:v1", raw=True)
    assert raw["config"]["digest"] is not None
    inspected = skopeo_inspect(registry_ecr, f"{unique_repo}:v1")
    assert inspected["Digest"] == descriptor["digest"]


def test_ecr_without_aws_credentials_is_one_line(moto, registry_ecr, cloud_plugins, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=21)])
    env = {**moto.env(), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    result = run_occystrap(
        "--insecure",
        "--middleware",
        f"ecr:hosts={registry_ecr.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_ecr.host}/nocreds:v1",
        env=_plugin_env(cloud_plugins, **env),
        check=False,
    )
    assert_one_line_error(result, "no AWS credentials", "AWS_ACCESS_KEY_ID")


def test_ecr_with_an_unknown_key_is_refused_by_moto(moto, registry_ecr, cloud_plugins, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=22)])
    env = {**moto.env(), "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000", "AWS_SECRET_ACCESS_KEY": "x"}
    result = run_occystrap(
        "--insecure",
        "--retries",
        "0",
        "--middleware",
        f"ecr:hosts={registry_ecr.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_ecr.host}/badkey:v1",
        env=_plugin_env(cloud_plugins, **env),
        check=False,
    )
    assert_one_line_error(result, "ECR refused an authorization token", "HTTP 403")


def test_google_adc_token_pushes_to_registry(
    google_account, google_oauth, registry_google, cloud_plugins, unique_repo, tmp_path
):
    key_file = google_account.key_file(tmp_path / "key.json", f"{google_oauth.url}/token")
    layout = tmp_path / "layout"
    descriptor = build_oci_layout(layout, [random_layer(32 * 1024, seed=23)])
    before = len(google_oauth.grants)
    result = run_occystrap(
        "--insecure",
        "--debug",
        "--middleware",
        f"gcr:hosts={registry_google.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_google.host}/{unique_repo}:v1",
        env=_plugin_env(cloud_plugins, GOOGLE_APPLICATION_CREDENTIALS=str(key_file)),
    )
    assert "GoogleRegistryCredentials" in result.stderr
    assert GOOGLE_ACCESS_TOKEN not in result.stderr
    assert len(google_oauth.grants) - before == 1  # one refresh, shared by the whole run
    assert skopeo_inspect(registry_google, f"{unique_repo}:v1")["Digest"] == descriptor["digest"]


def test_google_without_credentials_is_one_line(registry_google, cloud_plugins, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=24)])
    result = run_occystrap(
        "--insecure",
        "--middleware",
        f"gcr:hosts={registry_google.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_google.host}/nocreds:v1",
        env=_plugin_env(
            cloud_plugins,
            GOOGLE_APPLICATION_CREDENTIALS="",
            CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"),
            GCE_METADATA_HOST="127.0.0.1:9",
            GCE_METADATA_IP="127.0.0.1:9",
        ),
        check=False,
    )
    assert_one_line_error(result, "no Google credentials", "GOOGLE_APPLICATION_CREDENTIALS")


def _azure_env(cloud_plugins, azure_ad, secret: str = AZURE_CLIENT_SECRET) -> dict[str, str]:
    return _plugin_env(
        cloud_plugins,
        AZURE_TENANT_ID="test-tenant",
        AZURE_CLIENT_ID="occystrap-test-client",
        AZURE_CLIENT_SECRET=secret,
        AZURE_AUTHORITY_HOST=azure_ad.url,
    )


def test_azure_ad_token_is_exchanged_and_pushes(
    azure_ad, registry_azure, cloud_plugins, unique_repo, tmp_path
):
    layout = tmp_path / "layout"
    descriptor = build_oci_layout(layout, [random_layer(32 * 1024, seed=25)])
    exchanges = registry_azure.token_server.exchanges
    result = run_occystrap(
        "--insecure",
        "--ca-cert",
        str(azure_ad.ca_file),
        "--debug",
        "--middleware",
        f"acr:hosts={registry_azure.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_azure.host}/{unique_repo}:v1",
        env=_azure_env(cloud_plugins, azure_ad),
    )
    assert "AcrCredentials" in result.stderr
    assert f"POST {azure_ad.url}/test-tenant/oauth2/v2.0/token" in result.stderr  # via the chain
    assert AZURE_AD_TOKEN not in result.stderr and AZURE_CLIENT_SECRET not in result.stderr
    assert registry_azure.token_server.exchanges - exchanges == 1
    refresh_grants = [
        r for r in registry_azure.token_server.requests if r.grant_type == "refresh_token"
    ]
    assert refresh_grants and all(r.granted for r in refresh_grants)
    assert skopeo_inspect(registry_azure, f"{unique_repo}:v1")["Digest"] == descriptor["digest"]


def test_azure_with_a_wrong_secret_is_one_line(azure_ad, registry_azure, cloud_plugins, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=26)])
    result = run_occystrap(
        "--insecure",
        "--ca-cert",
        str(azure_ad.ca_file),
        "--middleware",
        f"acr:hosts={registry_azure.host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{registry_azure.host}/wrong:v1",
        env=_azure_env(cloud_plugins, azure_ad, secret="wrong-secret"),
        check=False,
    )
    assert_one_line_error(result, "no usable Azure credential", "AZURE_CLIENT_SECRET")
    assert "wrong-secret" not in result.stderr


@pytest.mark.parametrize(
    ("plugin", "blocked", "extra"),
    [
        ("ecr", "botocore", "occystrap[aws]"),
        ("gcr", "google", "occystrap[gcp]"),
        ("acr", "azure", "occystrap[azure]"),
    ],
)
def test_missing_sdk_names_the_extra(plugin, blocked, extra, cloud_plugins, free_port, tmp_path):
    """A plug-in installed without its SDK fails only when it claims a registry, in one line
    naming the extra that brings the SDK."""
    blocker = tmp_path / "blocker" / blocked
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError('{blocked} is not installed')\n")
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=27)])
    env = _plugin_env(cloud_plugins)
    env["PYTHONPATH"] = f"{blocker.parent}{os.pathsep}{env['PYTHONPATH']}"
    host = f"127.0.0.1:{free_port}"
    result = run_occystrap(
        "--insecure",
        "--middleware",
        f"{plugin}:hosts={host}",
        "process",
        f"oci-layout://{layout}",
        f"registry://{host}/x:v1",
        env=env,
        check=False,
    )
    assert_one_line_error(result, extra)
