"""Credentials and TLS where podman, skopeo and docker keep them, against the real registries.

skopeo writes the auth files (so the locations are the ones the ecosystem really uses) and
checks what occystrap pushed; certificate directories live under temporary certs.d roots.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.conftest import BASIC_PASSWORD, BASIC_USERNAME
from tests.integration.images import skopeo_inspect
from tests.integration.pull_checks import TAG, assert_tar_is_image, pull_to_tar, seed_image
from tests.integration.servers import SKOPEO_BINARY, RegistryServer, require_binary

pytestmark = pytest.mark.integration

OTHER_USERNAME = "otheruser"
OTHER_PASSWORD = "other:pass"  # a ':' in the password must survive --dest-creds


@pytest.fixture(scope="module")
def registry_basic_other(tmp_path_factory) -> Iterator[RegistryServer]:
    """A second htpasswd registry whose account differs from `registry_basic`'s."""
    workdir = tmp_path_factory.mktemp("registry-basic-other")
    with RegistryServer(
        workdir, auth="basic", username=OTHER_USERNAME, password=OTHER_PASSWORD
    ) as server:
        yield server


@pytest.fixture(scope="module")
def registry_mtls(tmp_path_factory) -> Iterator[RegistryServer]:
    """A TLS registry that refuses clients without a certificate from its client CA."""
    with RegistryServer(
        tmp_path_factory.mktemp("registry-mtls"), tls=True, client_certs=True
    ) as server:
        yield server


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    """HOME and XDG places of our own, so no real auth file or certs.d is read."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "OCCYSTRAP_CERTS_DIRS": str(tmp_path / "no-certs"),
        "REGISTRY_AUTH_FILE": "",
        "DOCKER_CONFIG": "",
    }


def _skopeo_login(registry: RegistryServer, env: dict[str, str], *flags: str) -> None:
    """`skopeo login` as a user would, with `env` deciding where it writes."""
    result = subprocess.run(
        [
            require_binary(SKOPEO_BINARY),
            "login",
            "--tls-verify=false",
            "--username",
            registry.username,
            "--password-stdin",
            *flags,
            registry.host,
        ],
        input=registry.password,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_credentials_written_by_skopeo_login_authfile(registry_basic, unique_repo, tmp_path):
    seed_image(registry_basic, unique_repo, tmp_path)
    env = _isolated_env(tmp_path)
    authfile = tmp_path / "skopeo-auth.json"
    _skopeo_login(registry_basic, env, "--authfile", str(authfile))
    out = tmp_path / "image.tar"
    refused = pull_to_tar(
        ["--insecure", "--retries", "0"], registry_basic.host, unique_repo, out, env, check=False
    )
    assert_one_line_error(refused, "401")
    pull_to_tar(
        ["--insecure", "--authfile", str(authfile)], registry_basic.host, unique_repo, out, env
    )
    assert_tar_is_image(out, registry_basic, unique_repo)
    out.unlink()
    by_env = {**env, "REGISTRY_AUTH_FILE": str(authfile)}
    pull_to_tar(["--insecure"], registry_basic.host, unique_repo, out, by_env)
    assert_tar_is_image(out, registry_basic, unique_repo)


def test_credentials_in_skopeos_default_auth_file(registry_basic, unique_repo, tmp_path):
    """No --authfile anywhere: skopeo writes ${XDG_RUNTIME_DIR}/containers/auth.json and
    occystrap finds it there, ahead of a stale docker config.json."""
    seed_image(registry_basic, unique_repo, tmp_path)
    env = _isolated_env(tmp_path)
    (tmp_path / "run").mkdir()
    _skopeo_login(registry_basic, env)
    assert (tmp_path / "run" / "containers" / "auth.json").is_file()
    stale = tmp_path / "home" / ".docker" / "config.json"
    stale.parent.mkdir()
    wrong = base64.b64encode(b"wrong:wrong").decode()
    stale.write_text(json.dumps({"auths": {registry_basic.host: {"auth": wrong}}}))
    out = tmp_path / "image.tar"
    pull_to_tar(["--insecure"], registry_basic.host, unique_repo, out, env)
    assert_tar_is_image(out, registry_basic, unique_repo)


def test_copy_with_src_creds_and_dest_creds(
    registry_basic, registry_basic_other, unique_repo, tmp_path
):
    """Two registries, two accounts: each end gets its own, and skopeo sees the same image."""
    source = seed_image(registry_basic, unique_repo, tmp_path)
    env = {
        **_isolated_env(tmp_path),
        "OCCYSTRAP_DEST_CREDS": f"{OTHER_USERNAME}:{OTHER_PASSWORD}",
    }
    swapped = run_occystrap(
        "--insecure",
        "--retries",
        "0",
        "--src-creds",
        f"{OTHER_USERNAME}:{OTHER_PASSWORD}",
        "--dest-creds",
        f"{BASIC_USERNAME}:{BASIC_PASSWORD}",
        "process",
        f"registry://{registry_basic.host}/{unique_repo}:{TAG}",
        f"registry://{registry_basic_other.host}/{unique_repo}:{TAG}",
        env=env,
        check=False,
    )
    assert_one_line_error(swapped, "401")
    run_occystrap(
        "--insecure",
        "--src-creds",
        f"{BASIC_USERNAME}:{BASIC_PASSWORD}",
        "process",
        f"registry://{registry_basic.host}/{unique_repo}:{TAG}",
        f"registry://{registry_basic_other.host}/{unique_repo}:{TAG}",
        env=env,
    )
    copied = skopeo_inspect(registry_basic_other, f"{unique_repo}:{TAG}")
    assert copied["Digest"] == source["Digest"]


def test_same_registry_two_different_accounts_for_one_repository_is_refused(
    registry_basic, unique_repo, tmp_path
):
    result = run_occystrap(
        "--insecure",
        "--src-creds",
        "a:1",
        "--dest-creds",
        "b:2",
        "process",
        f"registry://{registry_basic.host}/{unique_repo}:{TAG}",
        f"registry://{registry_basic.host}/{unique_repo}:v2",
        env=_isolated_env(tmp_path),
        check=False,
    )
    assert_one_line_error(result, "--src-creds and --dest-creds differ", unique_repo)


def _certs_root(tmp_path: Path, registry: RegistryServer) -> Path:
    """ROOT/HOST:PORT/ holding the registry's CA (and client pair), as in /etc/docker/certs.d."""
    root = tmp_path / "certs.d"
    host_dir = root / registry.host
    host_dir.mkdir(parents=True)
    shutil.copy(registry.ca_cert, host_dir / "ca.crt")
    for path in registry.client_cert_files or ():
        shutil.copy(path, host_dir / path.name)
    return root


def test_ca_found_in_a_certs_d_directory(registry_tls, unique_repo, tmp_path):
    seed_image(registry_tls, unique_repo, tmp_path)
    env = _isolated_env(tmp_path)
    out = tmp_path / "image.tar"
    untrusted = pull_to_tar(
        ["--retries", "0"], registry_tls.host, unique_repo, out, env, check=False
    )
    assert_one_line_error(untrusted, "not trusted", f"certs.d/{registry_tls.host}/ca.crt")
    env["OCCYSTRAP_CERTS_DIRS"] = str(_certs_root(tmp_path, registry_tls))
    pull_to_tar([], registry_tls.host, unique_repo, out, env)
    assert_tar_is_image(out, registry_tls, unique_repo)


def test_client_certificate_from_a_certs_d_directory(registry_mtls, unique_repo, tmp_path):
    seed_image(registry_mtls, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    ca_only = ["--ca-cert", str(registry_mtls.ca_cert), "--retries", "0"]
    refused = pull_to_tar(
        ca_only, registry_mtls.host, unique_repo, out, _isolated_env(tmp_path), check=False
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    root = _certs_root(tmp_path, registry_mtls)
    pull_to_tar(
        ["--certs-dir", str(root)], registry_mtls.host, unique_repo, out, _isolated_env(tmp_path)
    )
    assert_tar_is_image(out, registry_mtls, unique_repo)


def test_tls_verify_false_against_the_tls_registry(registry_tls, unique_repo, tmp_path):
    seed_image(registry_tls, unique_repo, tmp_path)
    env = {**_isolated_env(tmp_path), "OCCYSTRAP_TLS_VERIFY": "false"}
    out = tmp_path / "image.tar"
    result = pull_to_tar([], registry_tls.host, unique_repo, out, env)
    assert_tar_is_image(out, registry_tls, unique_repo)
    warnings = [line for line in result.stderr.splitlines() if "verification is off" in line]
    assert len(warnings) == 1, result.stderr


def test_tls_verify_false_is_not_plain_http(registry_plain, unique_repo, tmp_path):
    env = _isolated_env(tmp_path)
    out = tmp_path / "image.tar"
    flags = ["--tls-verify=false", "--retries", "0"]
    result = pull_to_tar(flags, registry_plain.host, unique_repo, out, env, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    warning, error = result.stderr.strip().splitlines()
    assert "verification is off" in warning
    assert error.startswith("occystrap: error: network error talking to 127.0.0.1")
    assert "--insecure for plain-HTTP registries" in error


def test_src_tls_verify_false_trusts_only_the_source(
    registry_tls, registry_plain, unique_repo, tmp_path
):
    """skopeo's per-end flags: the source's certificate goes unverified, and only the
    source's; without the flag the untrusted certificate is a one-line error."""
    seed_image(registry_tls, unique_repo, tmp_path)
    source = f"registry://{registry_tls.host}/{unique_repo}:{TAG}"
    destination = f"registry://{registry_plain.host}/{unique_repo}-copy:{TAG}?insecure=true"
    refused = run_occystrap("process", source, destination, check=False)
    assert_one_line_error(refused, "not trusted")
    run_occystrap("--src-tls-verify=false", "process", source, destination)
    assert skopeo_inspect(registry_plain, f"{unique_repo}-copy:{TAG}")["Digest"]
    backwards = run_occystrap(
        "--src-tls-verify=false",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}-copy:{TAG}?insecure=true",
        f"registry://{registry_tls.host}/{unique_repo}-back:{TAG}",
        check=False,
    )
    assert_one_line_error(backwards, "not trusted")  # the destination is still verified
    run_occystrap(
        "--dest-tls-verify=false",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}-copy:{TAG}?insecure=true",
        f"registry://{registry_tls.host}/{unique_repo}-back:{TAG}",
    )


def test_src_cert_dir_names_the_source_registrys_ca(
    registry_tls, registry_plain, unique_repo, tmp_path
):
    """skopeo's --src-cert-dir: a directory holding the source's ca.crt, for that end only."""
    seed_image(registry_tls, unique_repo, tmp_path)
    env = _isolated_env(tmp_path)
    cert_dir = _certs_root(tmp_path, registry_tls) / registry_tls.host
    source = f"registry://{registry_tls.host}/{unique_repo}:{TAG}"
    destination = f"registry://{registry_plain.host}/{unique_repo}-copy:{TAG}?insecure=true"
    refused = run_occystrap("process", source, destination, env=env, check=False)
    assert_one_line_error(refused, "not trusted")
    run_occystrap("--src-cert-dir", str(cert_dir), "process", source, destination, env=env)
    assert skopeo_inspect(registry_plain, f"{unique_repo}-copy:{TAG}")["Digest"]
    missing = run_occystrap(
        "--src-cert-dir", str(tmp_path / "nowhere"), "process", source, destination,
        env=env, check=False,
    )  # fmt: skip
    assert_one_line_error(missing, "nowhere")
