"""Destinations through the real CLI: refused before any download, never destroyed, and a
full disk or temp dir is one line naming the path, with nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.images import random_layer
from tests.integration.pull_checks import TAG, seed_image
from tests.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.integration


def _pull(fault_proxy, repo: str, destination: str, *flags: str):
    return run_occystrap(
        "--insecure",
        *flags,
        "process",
        f"registry://{fault_proxy.host}/{repo}:{TAG}",
        destination,
        check=False,
    )


@pytest.fixture(scope="module")
def seeded_repo(registry_plain, tmp_path_factory) -> str:
    """One small image for the tests that must fail before fetching it (so would succeed
    in fetching it, and then overwrite things, if the check were missing)."""
    repo = "test/destinations-seeded"
    seed_image(registry_plain, repo, tmp_path_factory.mktemp("seed"))
    return repo


def _precious(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


@pytest.mark.parametrize(
    "destination, fragment",
    [
        ("tar://{tmp}/precious", "is a directory"),
        ("tar://{tmp}/missing/out.tar", "does not exist"),
        ("tar://{tmp}/afile/out.tar", "is not a directory"),
        ("dir://{tmp}/precious", "not an earlier occystrap"),
        ("dir://{tmp}/precious?unique_names=true", "not an earlier occystrap"),
        ("dir://{tmp}/afile", "is a file"),
        ("dir://{tmp}/afile/sub", "is a file"),
    ],
)
def test_bad_destinations_are_refused_before_any_request(
    fault_proxy, seeded_repo, tmp_path, destination, fragment
):
    precious = _precious(tmp_path / "precious")
    (tmp_path / "afile").write_text("not a directory")
    before = sorted(os.listdir(tmp_path))
    fault_proxy.reset()
    result = _pull(fault_proxy, seeded_repo, destination.format(tmp=tmp_path))
    assert_one_line_error(result, fragment)
    assert fault_proxy.requests == []
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(precious) == ["thesis.tex"]
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_dir_output_can_be_written_again_but_a_catalogue_needs_unique_names(
    fault_proxy, seeded_repo, tmp_path
):
    single, shared = tmp_path / "single", tmp_path / "shared"
    for _ in range(2):
        assert _pull(fault_proxy, seeded_repo, f"dir://{single}").returncode == 0
        assert _pull(fault_proxy, seeded_repo, f"dir://{shared}?unique_names=true").returncode == 0
    assert_one_line_error(_pull(fault_proxy, seeded_repo, f"dir://{shared}"), "unique_names=true")


@pytest.fixture
def big_image(registry_plain, unique_repo, tmp_path) -> str:
    """An image of ~3 MB of incompressible layer: more than the 1 MiB filesystems below."""
    seed_image(registry_plain, unique_repo, tmp_path, [random_layer(3_000_000, 5), {"a": b"a"}])
    return unique_repo


def test_a_full_temp_dir_is_reported_as_such(fault_proxy, big_image, tmp_path):
    with mounted_tmpfs(tmp_path / "tiny") as tiny:
        out = tmp_path / "out.tar"
        result = _pull(fault_proxy, big_image, f"tar://{out}", "--temp-dir", str(tiny))
        assert_one_line_error(result, "no space left", str(tiny))
        assert os.listdir(tiny) == []
    assert not out.exists()


@pytest.mark.parametrize("destination", ["tar://{tiny}/out.tar", "dir://{tiny}/out?expand=true"])
def test_a_full_destination_is_reported_as_such(fault_proxy, big_image, tmp_path, destination):
    with mounted_tmpfs(tmp_path / "tiny") as tiny:
        target = destination.format(tiny=tiny)
        result = _pull(fault_proxy, big_image, target, "--temp-dir", str(tmp_path))
        assert_one_line_error(result, "no space left", str(tiny))
        assert "corrupt" not in result.stderr
        leftovers = [name for name in os.listdir(tiny) if name != "out"]
        assert leftovers == []
        if (tiny / "out").exists():  # the dir output's own marker may stay, nothing else
            assert os.listdir(tiny / "out") == [".occystrap"]
