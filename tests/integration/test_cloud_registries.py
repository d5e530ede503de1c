"""Cloud registry credentials through the installed plug-in distributions: ECR tokens from
moto's ECR (SigV4-checked), accepted by a real registry that takes that password."""

from __future__ import annotations

import os

from tests.integration.cli import assert_one_line_error, run_occystrap
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
