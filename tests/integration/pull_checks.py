"""Seed an image, pull it through the CLI to a tarball, and prove the tarball is that image.

Shared by the resilience, mirror/plug-in and HTTP/2 tests: each breaks the network differently,
and each must end with exactly the image the registry holds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

from tests.integration.cli import run_occystrap
from tests.integration.images import (
    build_oci_layout,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

TAG = "v1"


def seed_image(
    registry, repo: str, workdir: Path, layers: list[Mapping[str, bytes]] | None = None
) -> dict:
    """Push a generated image as REPO:v1 with skopeo; return skopeo's view of its manifest."""
    layout = workdir / f"layout-{repo.replace('/', '-')}"
    build_oci_layout(layout, layers or [random_layer(200_000, 1), {"etc/motd": b"hi\n"}])
    push_with_skopeo(layout, registry, repo, TAG)
    return skopeo_inspect(registry, f"{repo}:{TAG}")


def pull_to_tar(
    flags: list[str],
    host: str,
    repo: str,
    out: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`occystrap FLAGS process registry://HOST/REPO:v1 tar://OUT`."""
    return run_occystrap(
        *flags,
        "process",
        f"registry://{host}/{repo}:{TAG}",
        f"tar://{out}",
        env=env,
        check=check,
    )


def _sha256_of_member(tar: tarfile.TarFile, name: str) -> str:
    """Digest of one archive member, read a chunk at a time."""
    digest = hashlib.sha256()
    member = tar.extractfile(name)
    while chunk := member.read(1 << 20):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def assert_tar_is_image(out: Path, registry, repo: str) -> None:
    """The tarball holds REPO:v1 exactly: same config and every layer hashes to its diff_id."""
    expected = skopeo_inspect(registry, f"{repo}:{TAG}", config=True)
    archived = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{out}").stdout)
    assert archived == expected
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        layer_digests = [_sha256_of_member(tar, name) for name in manifest[0]["Layers"]]
    assert layer_digests == expected["rootfs"]["diff_ids"]
