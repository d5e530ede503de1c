"""occystrap process/info against the real registry, checked with skopeo."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, assert_one_line_error, registry_flags, run_occystrap
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration

LABELS = {"org.example.team": "infra"}
LAYER_TEXT = {"etc/motd": b"hello\n" * 100_000}


def _seed(registry, repo: str, tmp_path: Path, layers=None, fmt: str = "v2s2") -> dict:
    """Push a generated image with skopeo; return skopeo's view of it."""
    layout = tmp_path / "layout"
    build_oci_layout(
        layout,
        layers or [random_layer(600_000, 1), {"etc/motd": b"hello\n"}],
        config_overrides={"config": {"Env": ["A=1"], "Cmd": ["/bin/sh"], "Labels": LABELS}},
    )
    push_with_skopeo(layout, registry, repo, "v1", manifest_format=fmt)
    return skopeo_inspect(registry, f"{repo}:v1")


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_basic", "registry_tls"])
def test_copy_between_repositories_keeps_the_digest(fixture, request, unique_repo, tmp_path):
    registry = request.getfixturevalue(fixture)
    original = _seed(registry, unique_repo, tmp_path)
    run_occystrap(
        *registry_flags(registry),
        "process",
        f"registry://{registry.host}/{unique_repo}:v1",
        f"registry://{registry.host}/{unique_repo}-copy:v2",
    )
    copied = skopeo_inspect(registry, f"{unique_repo}-copy:v2")
    assert copied["Digest"] == original["Digest"]
    assert copied["Layers"] == original["Layers"]


def test_token_auth_costs_one_token_fetch_per_scope(registry_token, unique_repo, tmp_path):
    _seed(registry_token, unique_repo, tmp_path, layers=[random_layer(1000, n) for n in range(5)])
    tokens = registry_token.token_server
    tokens.reset()
    out = tmp_path / "image.tar"
    run_occystrap(
        *registry_flags(registry_token),
        "process",
        f"registry://{registry_token.host}/{unique_repo}:v1",
        f"tar://{out}",
    )
    # Manifest, config and five layers: seven authenticated requests, one token.
    assert tokens.count() == 1, tokens.counts_by_scope()
    assert tokens.count(f"repository:{unique_repo}:pull") == 1


def test_token_auth_push_escalates_scope_and_mounts(registry_token, unique_repo, tmp_path):
    original = _seed(registry_token, unique_repo, tmp_path)
    run_occystrap(
        *registry_flags(registry_token),
        "process",
        f"registry://{registry_token.host}/{unique_repo}:v1",
        f"registry://{registry_token.host}/{unique_repo}-pushed:v1",
    )
    assert (
        skopeo_inspect(registry_token, f"{unique_repo}-pushed:v1")["Digest"] == (original["Digest"])
    )


def test_pull_to_tar_is_readable_by_skopeo(registry_basic, unique_repo, tmp_path):
    original = _seed(registry_basic, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    run_occystrap(
        *registry_flags(registry_basic),
        "process",
        f"registry://{registry_basic.host}/{unique_repo}:v1",
        f"tar://{out}",
    )
    archived = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{out}").stdout)
    config = skopeo_inspect(registry_basic, f"{unique_repo}:v1", config=True)
    assert archived["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"]
    assert archived["config"]["Labels"] == LABELS
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert len(manifest[0]["Layers"]) == len(original["Layers"])


def test_pull_to_a_file_and_to_a_pipe_writes_the_same_bytes(registry_plain, unique_repo, tmp_path):
    """A file gets each layer streamed in from the network (its size filled in afterwards),
    a pipe gets layers inflated to disk first: two ways to the one tarball."""
    _seed(registry_plain, unique_repo, tmp_path, layers=[random_layer(3_500_000, 5), LAYER_TEXT])
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    flags = registry_flags(registry_plain)
    run_occystrap(*flags, "process", source, f"tar://{tmp_path / 'file.tar'}")
    command = shlex.join([sys.executable, "-m", "occystrap", *flags, "process", source, "tar://-"])
    piped = subprocess.run(
        f"{command} | cat > {shlex.quote(str(tmp_path / 'piped.tar'))}",
        shell=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert (tmp_path / "file.tar").read_bytes() == (tmp_path / "piped.tar").read_bytes()


def test_tar_round_trip_back_to_a_registry(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    flags = registry_flags(registry_plain)
    run_occystrap(
        *flags, "process", f"registry://{registry_plain.host}/{unique_repo}:v1", f"tar://{out}"
    )
    run_occystrap(
        *flags, "process", f"tar://{out}", f"registry://{registry_plain.host}/{unique_repo}-back:v1"
    )
    pushed = skopeo_inspect(registry_plain, f"{unique_repo}-back:v1", config=True)
    original = skopeo_inspect(registry_plain, f"{unique_repo}:v1", config=True)
    assert pushed["rootfs"]["diff_ids"] == original["rootfs"]["diff_ids"]
    # Layers were stored uncompressed in the tarball and compressed again: deterministically.
    run_occystrap(
        *flags,
        "process",
        f"tar://{out}",
        f"registry://{registry_plain.host}/{unique_repo}-again:v1",
    )
    assert (
        skopeo_inspect(registry_plain, f"{unique_repo}-again:v1")["Digest"]
        == (skopeo_inspect(registry_plain, f"{unique_repo}-back:v1")["Digest"])
    )


def test_zstd_push_is_an_oci_image_skopeo_can_copy(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    flags = registry_flags(registry_plain)
    run_occystrap(
        *flags, "process", f"registry://{registry_plain.host}/{unique_repo}:v1", f"tar://{out}"
    )
    run_occystrap(
        *flags,
        "--compression",
        "zstd",
        "process",
        f"tar://{out}",
        f"registry://{registry_plain.host}/{unique_repo}-zstd:v1",
    )
    raw = skopeo_inspect(registry_plain, f"{unique_repo}-zstd:v1", raw=True)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    run_skopeo(
        "copy",
        *registry_plain.skopeo_src_args(),
        f"docker://{registry_plain.host}/{unique_repo}-zstd:v1",
        f"oci:{tmp_path / 'oci'}",
    )


def test_multi_arch_picks_the_requested_platform(registry_plain, unique_repo, tmp_path):
    layout = tmp_path / "multi"
    build_multiarch_layout(
        layout,
        {("linux", "amd64"): [{"arch": b"amd64"}], ("linux", "arm64"): [{"arch": b"arm64"}]},
    )
    push_multiarch_with_skopeo(layout, registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    arm = json.loads(
        run_occystrap(*flags, "-O", "json", "--architecture", "arm64", "info", source).stdout
    )
    assert (arm["platform"]["os"], arm["platform"]["architecture"]) == ("linux", "arm64")
    amd = json.loads(run_occystrap(*flags, "-O", "json", "info", source + "?arch=amd64").stdout)
    assert amd["platform"]["architecture"] == "amd64"
    assert amd["index_digest"] == arm["index_digest"]
    missing = run_occystrap(*flags, "--architecture", "s390x", "info", source, check=False)
    assert_one_line_error(missing, "linux/s390x", "linux/amd64", "linux/arm64")


def test_info_text_and_json(registry_plain, unique_repo, tmp_path):
    original = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    details = json.loads(run_occystrap(*flags, "-O", "json", "info", source).stdout)
    assert details["manifest_digest"] == original["Digest"]
    assert [layer["digest"] for layer in details["layers"]] == original["Layers"]
    assert details["labels"] == LABELS and details["env"] == ["A=1"]
    text = run_occystrap(*flags, "info", source).stdout
    assert original["Layers"][0] in text and "org.example.team=infra" in text
    assert "linux/amd64" in text


def test_corrupt_blob_fails_and_leaves_no_output(registry_plain, unique_repo, tmp_path):
    original = _seed(registry_plain, unique_repo, tmp_path)
    digest = original["Layers"][0].partition(":")[2]
    blob = next(registry_plain.storage.rglob(f"blobs/sha256/{digest[:2]}/{digest}/data"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    result = run_occystrap(
        *registry_flags(registry_plain),
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"tar://{out}",
        check=False,
    )
    assert_one_line_error(result, digest[:12])
    assert list(tmp_path.glob("out.tar*")) == [] and not out.exists()


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [
        ("registry://", "image reference"),
        ("ftp://example/x", "unknown URI scheme"),
        ("registry://127.0.0.1:1/UPPER/case", "UPPER"),
        ("dir://x?color=red", "color"),
    ],
)
def test_bad_uri_is_a_one_line_error(argument, fragment, tmp_path):
    result = run_occystrap("process", argument, f"tar://{tmp_path / 'x.tar'}", check=False)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "x.tar").exists()


def test_unreachable_registry_is_a_one_line_error(free_port, tmp_path):
    result = run_occystrap(
        "--insecure",
        "--retries",
        "0",
        "process",
        f"registry://127.0.0.1:{free_port}/nothing/here:v1",
        f"tar://{tmp_path / 'x.tar'}",
        check=False,
    )
    assert_one_line_error(result, "127.0.0.1")


def test_debug_shows_the_chain_and_never_a_secret(registry_token, unique_repo, tmp_path):
    _seed(registry_token, unique_repo, tmp_path)
    result = run_occystrap(
        *registry_flags(registry_token),
        "--debug",
        "--middleware",
        "header:X-Trace=1",
        "info",
        f"registry://{registry_token.host}/{unique_repo}:v1",
    )
    log = result.stderr
    # Installed automatic plug-ins (the cloud credentials) sit between the named ones and
    # the core links.
    assert re.search(
        r"middleware chain: OciArtifacts -> HeaderMiddleware -> (\w+ -> )*RegistryAuth"
        r" -> QuayAuth -> Retry -> Logging ->",
        log,
    ), log
    assert f"GET http://{registry_token.host}/v2/{unique_repo}/manifests/v1 -> 200" in log
    issued = registry_token.token_server.requests
    assert issued, "the token server was never asked"
    assert registry_token.password not in log
    assert "Authorization" not in log and "Bearer" not in log
