"""The blob cache on real pushes: a repeat push of a tarball compresses and uploads nothing."""

from __future__ import annotations

import pytest

from tests.integration.cli import registry_flags, run_occystrap
from tests.integration.images import build_oci_layout, random_layer, run_skopeo, skopeo_inspect

pytestmark = pytest.mark.integration


def _tarball(tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(2_000_000, 3), random_layer(1_000_000, 4)])
    tar = tmp_path / "image.tar"
    run_skopeo("copy", "--quiet", f"oci:{layout}", f"docker-archive:{tar}:team/app:1")
    return tar


def _summary(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_repeat_push_to_another_repository_uploads_no_layer_bytes(
    registry_plain, unique_repo, tmp_path
):
    tar = _tarball(tmp_path)
    flags = registry_flags(registry_plain)
    first = run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-a:1"
    )
    assert "blobs 3 uploaded" in _summary(first.stderr), first.stderr
    again = run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-b:1"
    )
    line = _summary(again.stderr)
    assert "blobs 0 uploaded, 3 mounted" in line, line  # layers and config, remembered
    assert "0 B uploaded" in line, line
    assert (
        skopeo_inspect(registry_plain, f"{unique_repo}-b:1")["Digest"]
        == skopeo_inspect(registry_plain, f"{unique_repo}-a:1")["Digest"]
    )
    copied = f"docker://{registry_plain.host}/{unique_repo}-b:1"
    run_skopeo("copy", "--quiet", "--src-tls-verify=false", copied, f"oci:{tmp_path / 'check'}:x")


def test_no_cache_compresses_and_uploads_again(registry_plain, unique_repo, tmp_path):
    tar = _tarball(tmp_path)
    flags = registry_flags(registry_plain)
    run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-a:1"
    )
    again = run_occystrap(
        *flags,
        "--no-cache",
        "process",
        f"tar://{tar}",
        f"registry://{registry_plain.host}/{unique_repo}-c:1",
    )
    assert "blobs 3 uploaded, 0 mounted" in _summary(again.stderr), again.stderr


def test_a_cache_entry_the_registry_denies_is_not_trusted(registry_plain, unique_repo, tmp_path):
    """The cache remembers a repository that no longer lends the blob: the mount is refused,
    so the layer is compressed and uploaded after all, and the push still succeeds."""
    tar = _tarball(tmp_path)
    flags = registry_flags(registry_plain)
    run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-a:1"
    )
    from occystrap.blobcache import BlobCache

    with (
        BlobCache.open() as cache
    ):  # point every remembered location at a repository that has nothing
        rows = cache._read("SELECT digest FROM locations", ())
        for (digest,) in rows:
            cache.forget_location(digest, registry_plain.host, f"{unique_repo}-a")
            cache.record_location(digest, registry_plain.host, f"{unique_repo}-nowhere")
    again = run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-d:1"
    )
    line = _summary(again.stderr)
    assert "blobs 3 uploaded, 0 mounted" in line, line
    skopeo_inspect(registry_plain, f"{unique_repo}-d:1")


def test_a_poisoned_compressed_entry_is_checked_and_forgotten(
    registry_plain, unique_repo, tmp_path
):
    """The cache says each layer compresses to another blob the registry has (the config): the
    size the registry reports disagrees, so the layers are compressed again and the pushed
    manifest is the right one; the bad entries are forgotten."""
    from occystrap.blobcache import BlobCache

    tar = _tarball(tmp_path)
    flags = registry_flags(registry_plain)
    destination = f"registry://{registry_plain.host}/{unique_repo}:1"
    run_occystrap(*flags, "process", f"tar://{tar}", destination)
    config_digest = skopeo_inspect(registry_plain, f"{unique_repo}:1", raw=True)["config"]["digest"]
    with BlobCache.open() as cache:
        rows = cache._read("SELECT diff_id, setting, size, media_type FROM compressed", ())
        assert len(rows) == 2
        for diff_id, setting, size, media_type in rows:
            cache.record_compressed(diff_id, setting, config_digest, size, media_type)
    again = run_occystrap(
        *flags, "process", f"tar://{tar}", f"registry://{registry_plain.host}/{unique_repo}-b:1"
    )
    assert again.stderr.count("blob cache:") == 2, again.stderr
    manifest = skopeo_inspect(registry_plain, f"{unique_repo}-b:1", raw=True)
    assert manifest == skopeo_inspect(registry_plain, f"{unique_repo}:1", raw=True)
    copied = f"docker://{registry_plain.host}/{unique_repo}-b:1"
    run_skopeo("copy", "--quiet", "--src-tls-verify=false", copied, f"oci:{tmp_path / 'check'}:x")
    with BlobCache.open() as cache:
        remembered = cache._read("SELECT digest FROM compressed", ())
    assert (config_digest,) not in remembered
