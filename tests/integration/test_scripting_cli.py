"""What scripts get from `process`: -O json on stdout (digest, counts, bytes, per-platform
digests), --digestfile as skopeo writes it, -q for silence, and words that count right."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from occystrap.units import human_bytes
from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.images import (
    build_multiarch_layout,
    docker_save_blob_bytes,
    push_multiarch_with_skopeo,
    skopeo_inspect,
)
from tests.integration.pull_checks import TAG, seed_image

pytestmark = pytest.mark.integration


def seed_index(registry, repo: str, tmp_path) -> None:
    """Push a two-platform index (linux/amd64, linux/arm64) as REPO:TAG with skopeo."""
    layout = tmp_path / "multiarch"
    build_multiarch_layout(
        layout,
        {("linux", "amd64"): [{"a": b"amd64\n"}], ("linux", "arm64"): [{"a": b"arm64\n"}]},
    )
    push_multiarch_with_skopeo(layout, registry, repo, TAG)


def test_json_result_digestfile_and_quiet_for_one_image(registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    digestfile = tmp_path / "digest"
    result = run_occystrap(
        "--insecure",
        "-O",
        "json",
        "-q",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        f"registry://{registry_plain.host}/{unique_repo}-copy:{TAG}",
        "--digestfile",
        str(digestfile),
    )
    document = json.loads(result.stdout)
    expected = skopeo_inspect(registry_plain, f"{unique_repo}-copy:{TAG}")["Digest"]
    assert document["digest"] == expected
    assert digestfile.read_text() == expected
    assert document["kind"] == "image" and document["layers"] == 2
    assert document["platforms"] == {}
    assert sum(document["blobs"].values()) == 3  # config and two layers, each accounted for
    assert set(document["bytes"]) == {"downloaded", "uploaded"}
    assert document["blobs_are"] == "uploaded"
    assert result.stderr == ""  # -q: no summary line


def test_an_index_reports_its_platforms_and_their_digests(registry_plain, unique_repo, tmp_path):
    seed_index(registry_plain, unique_repo, tmp_path)
    result = run_occystrap(
        "--insecure",
        "-O",
        "json",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        f"oci-layout://{tmp_path / 'copy'}?tag=x",
    )
    document = json.loads(result.stdout)
    raw = skopeo_inspect(registry_plain, f"{unique_repo}:{TAG}", raw=True)
    assert document["kind"] == "index" and document["layers"] is None
    assert document["platforms"] == {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in raw["manifests"]
    }
    summary = result.stderr.strip().splitlines()[-1]
    assert ": 2 platforms, sha256:" in summary, summary  # not "2 layers"


def test_a_digestfile_needs_a_destination_with_a_manifest(registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    result = run_occystrap(
        "--insecure",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        f"tar://{tmp_path / 'out.tar'}",
        "--digestfile",
        str(tmp_path / "digest"),
        check=False,
    )
    assert_one_line_error(result, "stores no manifest", "--digestfile")
    assert not (tmp_path / "digest").exists()


def test_warnings_carry_one_prefix(registry_plain, unique_repo, tmp_path):
    seed_index(registry_plain, unique_repo, tmp_path)
    result = run_occystrap(
        "--insecure",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        f"tar://{tmp_path / 'out.tar'}",
    )
    warning = next(line for line in result.stderr.splitlines() if "WARNING" in line)
    assert warning.startswith("occystrap: WARNING: ") and warning.count("occystrap") == 1, warning
    assert ": 1 layer;" in result.stderr.strip().splitlines()[-1]  # not "1 layers"


def test_verbose_says_what_happened_to_each_blob(registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    tarball = tmp_path / "image.tar"
    run_occystrap("--insecure", "process", source, f"tar://{tarball}")
    pushed = f"registry://{registry_plain.host}/{unique_repo}-pushed:{TAG}"
    first = run_occystrap("--insecure", "-v", "process", f"tar://{tarball}", pushed)
    assert first.stderr.count(": uploaded to ") == 3, first.stderr  # two layers and a config
    again = run_occystrap("--insecure", "-v", "process", f"tar://{tarball}", pushed)
    assert again.stderr.count(": already in ") == 3, again.stderr
    mounted = run_occystrap(
        "--insecure", "-v", "process", pushed, f"{pushed.rpartition(':')[0]}-mounted:{TAG}"
    )
    assert mounted.stderr.count(": mounted from ") == 3, mounted.stderr


def test_plain_progress_lines_for_logs(registry_plain, unique_repo, tmp_path):
    """Off a terminal a run as short as this prints only its summary line by default (plain
    lines start after PLAIN_EVERY seconds); --progress plain prints a line per layer done
    from the start, so a CI log shows the run moving."""
    seed_image(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    quiet = run_occystrap("--insecure", "process", source, f"tar://{tmp_path / 'a.tar'}")
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr  # the summary only
    plain = run_occystrap(
        "--insecure", "--progress", "plain", "process", source, f"tar://{tmp_path / 'b.tar'}"
    )
    lines = plain.stderr.strip().splitlines()
    assert sum(line.startswith("occystrap: written ") for line in lines) == 2, plain.stderr
    assert all(" in " in line and " s" in line for line in lines[:-1]), plain.stderr


def test_search_and_info_say_what_they_do_with_the_platform_they_pick(
    registry_plain, unique_repo, tmp_path
):
    seed_index(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    searched = run_occystrap("--insecure", "search", source, "a")
    assert "platforms; searching linux/amd64" in searched.stderr, searched.stderr
    shown = run_occystrap("--insecure", "info", source)
    assert "platforms; showing linux/amd64" in shown.stderr, shown.stderr
    assert "writing" not in searched.stderr + shown.stderr


def test_a_layout_destination_says_written(registry_plain, unique_repo, tmp_path):
    """Blobs put into an OCI layout on this machine are "written" in the summary, in -O json
    and in -v's line per blob; a registry destination keeps "uploaded"."""
    seed_image(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    layout = f"oci-layout://{tmp_path / 'layout'}"
    result = run_occystrap("--insecure", "-v", "-O", "json", "process", source, layout)
    summary = result.stderr.strip().splitlines()[-1]
    assert "blobs 3 written, 0 mounted, 0 already there" in summary, summary
    assert " written in " in summary and "uploaded" not in summary, summary
    assert result.stderr.count(": written to ") == 3, result.stderr  # two layers and a config
    assert "uploaded" not in result.stderr, result.stderr
    document = json.loads(result.stdout)
    assert document["blobs"] == {"uploaded": 3, "mounted": 0, "already_there": 0}
    assert set(document["bytes"]) == {"downloaded", "uploaded"}  # the same keys everywhere
    assert document["blobs_are"] == "written"
    again = run_occystrap("--insecure", "-v", "process", source, layout)
    assert again.stderr.count(": already in ") == 3, again.stderr
    pushed = run_occystrap(
        "--insecure", "process", layout, f"registry://{registry_plain.host}/{unique_repo}-up:{TAG}"
    )
    assert "blobs 3 uploaded" in pushed.stderr and " uploaded in " in pushed.stderr


def _file_bytes(tree: Path) -> int:
    """The bytes of the regular files under `tree` (a file hard-linked twice once)."""
    files = {}
    for path in tree.rglob("*"):
        status = path.lstat()
        if stat.S_ISREG(status.st_mode):
            files[status.st_ino] = status.st_size
    return sum(files.values())


@pytest.mark.parametrize(
    "destination",
    ["tar://{tmp}/out.tar", "dir://{tmp}/out", "dir://{tmp}/out?expand=true",
     "oci-layout://{tmp}/out", "oci-archive://{tmp}/out.tar", "oci://{tmp}/out"],
)  # fmt: skip
def test_a_local_destination_counts_the_bytes_it_wrote(
    registry_plain, unique_repo, tmp_path, destination
):
    """The summary's "N written" (and -O json's bytes.uploaded) is what the destination
    stored: blobs as stored (compressed in a layout; the layer tars and config of a
    docker-save tree) and the files expanded; never 0 B."""
    seed_image(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    target = destination.format(tmp=tmp_path)
    result = run_occystrap("--insecure", "-O", "json", "process", source, target)
    out = tmp_path / ("out.tar" if target.endswith(".tar") else "out")
    if target.startswith(("oci-layout:", "oci-archive:")):
        manifest = skopeo_inspect(registry_plain, f"{unique_repo}:{TAG}", raw=True)
        expected = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    elif target.startswith("oci:"):
        expected = _file_bytes(out / "rootfs")
    else:
        expected = docker_save_blob_bytes(out)
        if target.endswith("expand=true"):
            expected += _file_bytes(out / "rootfs")
    assert expected > 200_000  # the seeded image's random layer, at least
    assert json.loads(result.stdout)["bytes"]["uploaded"] == expected
    summary = result.stderr.strip().splitlines()[-1]
    assert f" {human_bytes(expected)} written in " in summary, summary


def test_blobs_already_in_a_directory_are_not_counted_again(registry_plain, unique_repo, tmp_path):
    """A second write of the image into a shared dir:// finds its layer tars there: only the
    config, rewritten, counts as written."""
    seed_image(registry_plain, unique_repo, tmp_path)
    source = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    target = f"dir://{tmp_path}/out?unique_names=true"
    first = run_occystrap("--insecure", "-O", "json", "process", source, target)
    again = run_occystrap("--insecure", "-O", "json", "process", source, target)
    config = skopeo_inspect(registry_plain, f"{unique_repo}:{TAG}", raw=True)["config"]["size"]
    assert json.loads(first.stdout)["bytes"]["uploaded"] > config
    assert json.loads(again.stdout)["bytes"]["uploaded"] == config
