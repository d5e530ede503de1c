"""Registry-to-registry copies on the new pipeline: blobs asked for first, indexes kept whole."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest

from occystrap.endpoints import parse_uri
from occystrap.image import Image, Layer
from occystrap.library import copy
from occystrap.middleware.builder import build_client
from occystrap.pipeline import RunContext, run_pipeline
from occystrap.settings import RunSettings
from tests.integration.cli import registry_flags, run_occystrap
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

PLATFORMS = {
    ("linux", "amd64"): [random_layer(300_000, 1), {"arch": b"amd64"}],
    ("linux", "arm64"): [random_layer(300_000, 2), {"arch": b"arm64"}],
    ("linux", "s390x"): [{"arch": b"s390x"}],
}


def _seed(registry, repo: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(700_000, 7), random_layer(500_000, 8), {"a": b"b"}])
    push_with_skopeo(layout, registry, repo, "v1")


def _summary(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_second_copy_downloads_no_layer(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    other = registry_plain.host.replace("127.0.0.1", "localhost")  # another registry name
    target = f"registry://{other}/{unique_repo}-copy:v1"
    first = run_occystrap(*flags, "process", source, target)
    assert "blobs 4 uploaded" in _summary(first.stderr), first.stderr  # 3 layers, 1 config
    second = run_occystrap(*flags, "process", source, target)
    line = _summary(second.stderr)
    assert "0 uploaded, 0 mounted, 4 already there" in line, line
    assert "0 B downloaded, 0 B uploaded" in line, line
    assert skopeo_inspect(registry_plain, f"{unique_repo}-copy:v1", raw=True) == skopeo_inspect(
        registry_plain, f"{unique_repo}:v1", raw=True
    )


def test_same_registry_copy_mounts_instead_of_uploading(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    result = run_occystrap(*flags, "process", source, f"{source}-mounted".replace(":v1-", "-"))
    line = _summary(result.stderr)
    assert "blobs 0 uploaded, 4 mounted" in line, line  # every blob mounted, the config too
    assert "0 B downloaded" in line, line


def test_index_copy_keeps_every_platform_and_the_digest(registry_plain, unique_repo, tmp_path):
    build_multiarch_layout(tmp_path / "multi", PLATFORMS)
    push_multiarch_with_skopeo(tmp_path / "multi", registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    other = registry_plain.host.replace("127.0.0.1", "localhost")
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    result = run_occystrap(*flags, "process", source, f"registry://{other}/{unique_repo}-all:v1")
    original = run_skopeo("inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry_plain.host}/{unique_repo}:v1").stdout  # fmt: skip
    copied = run_skopeo("inspect", "--raw", "--tls-verify=false",
                        f"docker://{registry_plain.host}/{unique_repo}-all:v1").stdout  # fmt: skip
    assert copied == original
    index = json.loads(copied)
    digest = re.search(r"sha256:[0-9a-f]{64}", _summary(result.stderr)).group(0)
    assert digest == "sha256:" + hashlib.sha256(original.encode()).hexdigest()
    for entry in index["manifests"]:  # every platform's manifest and blobs are there
        run_skopeo("copy", "--quiet", "--src-tls-verify=false",
                   f"docker://{registry_plain.host}/{unique_repo}-all@{entry['digest']}",
                   f"oci:{tmp_path / 'check'}:{entry['platform']['architecture']}")  # fmt: skip


def test_platform_option_narrows_the_index(registry_plain, unique_repo, tmp_path):
    build_multiarch_layout(tmp_path / "multi", PLATFORMS)
    push_multiarch_with_skopeo(tmp_path / "multi", registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    target = f"registry://{registry_plain.host}/{unique_repo}-two:v1"
    run_occystrap(
        *flags, "process", "--platform", "linux/arm64", "--platform", "linux/s390x", source, target
    )
    index = skopeo_inspect(registry_plain, f"{unique_repo}-two:v1", raw=True)
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["arm64", "s390x"]
    missing = run_occystrap(
        *flags, "process", "--platform", "linux/ppc64le", source, target, check=False
    )
    assert missing.returncode != 0 and "available: linux/amd64" in missing.stderr


def test_single_image_destination_says_which_platform_it_took(
    registry_plain, unique_repo, tmp_path
):
    build_multiarch_layout(tmp_path / "multi", PLATFORMS)
    push_multiarch_with_skopeo(tmp_path / "multi", registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    result = run_occystrap(
        *flags, "--architecture", "arm64", "process", source, f"tar://{tmp_path / 'one.tar'}"
    )
    assert "3 platforms; writing linux/arm64" in result.stderr


class _GatedBlob:
    """A blob whose reading waits until `gate` opens (or fails the test after a while)."""

    local = False

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate

    def open(self):
        if not self.gate.wait(timeout=30):
            raise AssertionError("the output never started on the first layer")
        return self.inner.open()


def test_first_upload_starts_before_the_last_download_ends(registry_plain, unique_repo, tmp_path):
    """Overlap: the last layer's source cannot even be read until the first one is uploaded."""
    _seed(registry_plain, unique_repo, tmp_path)
    settings = RunSettings(insecure=True, parallel=2)
    source = parse_uri(f"registry://{registry_plain.host}/{unique_repo}:v1")
    other = registry_plain.host.replace("127.0.0.1", "localhost")
    destination = parse_uri(f"registry://{other}/{unique_repo}-overlap:v1")
    first_uploaded = threading.Event()
    with build_client(settings.chain_settings()) as http:
        ctx = RunContext(settings, http, tmp_path)
        image = source.open_input(ctx).read()
        assert isinstance(image, Image)
        layers = list(image.layers)
        layers[-1] = Layer(
            **{**layers[-1].__dict__, "blob": _GatedBlob(layers[-1].blob, first_uploaded)}
        )
        gated = Image(
            image.source, image.config, tuple(layers), image.manifest, image.manifest_media_type
        )

        class Watching:
            def read(self):
                return gated

        output = destination.open_output(ctx)
        original_add = ctx.stats.add

        def add(**counts):
            original_add(**counts)
            if counts.get("uploaded"):
                first_uploaded.set()

        ctx.stats.add = add  # type: ignore[method-assign]
        result = run_pipeline(Watching(), output, ctx)
    assert result.stats.uploaded == 4
    assert result.digest == skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]


def test_library_copy_returns_the_digest_and_counts(registry_plain, unique_repo, tmp_path):
    _seed(registry_plain, unique_repo, tmp_path)
    result = copy(
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"tar://{tmp_path / 'lib.tar'}",
        RunSettings(insecure=True),
    )
    assert result.layers == 3 and result.stats.bytes_downloaded > 1_000_000
    assert (tmp_path / "lib.tar").stat().st_size > 1_200_000
