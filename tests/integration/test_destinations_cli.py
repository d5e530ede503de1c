"""Destinations through the real CLI: refused before any download, never destroyed, and a
full disk or temp dir is one line naming the path, with nothing left behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, assert_one_line_error, run_occystrap
from tests.integration.images import build_oci_layout, random_layer
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
    """An image of ~3 MB of incompressible layer: more than the 1 MiB filesystems below. The
    big layer comes second: a pull streams the first layer it needs without a spool file, so
    only a later one passes through --temp-dir."""
    seed_image(registry_plain, unique_repo, tmp_path, [{"a": b"a"}, random_layer(3_000_000, 5)])
    return unique_repo


def test_a_full_temp_dir_is_reported_as_such(fault_proxy, big_image, tmp_path):
    with mounted_tmpfs(tmp_path / "tiny") as tiny:
        out = tmp_path / "out.tar"
        result = _pull(fault_proxy, big_image, f"tar://{out}", "--temp-dir", str(tiny))
        assert_one_line_error(result, "no space left", str(tiny))
        assert os.listdir(tiny) == []
    assert not out.exists()


@pytest.mark.parametrize(
    "destination",
    ["tar://{tiny}/out.tar", "dir://{tiny}/out?expand=true", "oci-layout://{tiny}/out"],
)
def test_a_full_destination_is_reported_as_such(fault_proxy, big_image, tmp_path, destination):
    with mounted_tmpfs(tmp_path / "tiny") as tiny:
        target = destination.format(tiny=tiny)
        result = _pull(fault_proxy, big_image, target, "--temp-dir", str(tmp_path))
        assert_one_line_error(result, "no space left", str(tiny))
        assert "corrupt" not in result.stderr
        leftovers = [name for name in os.listdir(tiny) if name != "out"]
        assert leftovers == []
        if (tiny / "out").exists():  # the dir output's own marker may stay, nothing else
            assert destination.startswith("dir://")  # a layout's skeleton is taken back
            assert os.listdir(tiny / "out") == [".occystrap"]


def _limited_open_files(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _out_of_descriptors(tmp_path: Path, destination: str) -> list[str]:
    """Copy a 30-layer layout to `destination` under open-file limits that reach each step
    of the run; every run either succeeds or fails in one line, leaving no work dir under
    --temp-dir and nothing where the output would have been. The failures' stderr."""
    source = tmp_path / "source"
    build_oci_layout(source, [random_layer(1000, n, name=f"f{n}") for n in range(30)])
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    failures = []
    for limit in range(6, 15):
        out, temp = tmp_path / f"out-{limit}", tmp_path / f"temp-{limit}"
        out.mkdir()
        command = [sys.executable, "-m", "occystrap", "--temp-dir", str(temp), "process"]
        result = subprocess.run(
            [*command, f"oci-layout://{source}", destination.format(out=out)],
            capture_output=True,
            text=True,
            env=environment,
            preexec_fn=_limited_open_files(limit),
            check=False,
        )
        assert os.listdir(temp) == [], (limit, result.stderr)
        if result.returncode == 0:
            continue
        failures.append(result.stderr)
        assert_one_line_error(result, "too many open files")
        assert os.listdir(out) == [], (limit, result.stderr)
    return failures


@pytest.mark.parametrize("destination", ["tar://{out}/image.tar", "oci-layout://{out}/l"])
def test_running_out_of_file_descriptors_leaves_nothing_behind(tmp_path, destination):
    """Whatever step the descriptors run out at, nothing is left behind (dir://: below)."""
    assert _out_of_descriptors(tmp_path, destination)  # the limits did reach the run


def test_running_out_of_file_descriptors_while_expanding_leaves_no_empty_work_dir(tmp_path):
    """Issue 17: out of descriptors inside dir://'s staging dir, the failed run left that
    work dir behind, empty (`image/.occystrap-partial-*/rootfs/`): removing a tree took a
    descriptor per level, and none was left. Some limit must fail the run in there."""
    failures = _out_of_descriptors(tmp_path, "dir://{out}/image?expand=true")
    assert any("/.occystrap-partial-" in stderr for stderr in failures), failures


# -- tar://: nothing replaced unasked, devices never; tar://- for pipes; many-image archives


def test_an_existing_tarball_is_replaced_only_when_asked(fault_proxy, seeded_repo, tmp_path):
    out = tmp_path / "out.tar"
    out.write_bytes(b"someone's tarball")
    fault_proxy.reset()
    result = _pull(fault_proxy, seeded_repo, f"tar://{out}")
    assert_one_line_error(result, str(out), "already exists", "?overwrite=true", "--force")
    assert fault_proxy.requests == []
    assert out.read_bytes() == b"someone's tarball"
    assert _pull(fault_proxy, seeded_repo, f"tar://{out}?overwrite=true").returncode == 0
    assert tarfile.is_tarfile(out)
    out.write_bytes(b"again")
    assert _pull(fault_proxy, seeded_repo, f"tar://{out}", "--force").returncode == 0
    assert tarfile.is_tarfile(out)
    assert sorted(os.listdir(tmp_path)) == ["out.tar"]


@pytest.mark.parametrize("device", ["/dev/null", "link-to-device"])
def test_a_device_or_a_symlink_to_one_is_never_replaced(fault_proxy, seeded_repo, tmp_path, device):
    target = Path(device)
    if device == "link-to-device":
        target = tmp_path / "stdout"
        target.symlink_to("/dev/null")  # as /dev/stdout is a link to a descriptor
    result = _pull(fault_proxy, seeded_repo, f"tar://{target}", "--force")
    assert_one_line_error(result, "not a regular file", "never replaced", "tar://-")
    assert Path("/dev/null").is_char_device()
    if device == "link-to-device":
        assert os.readlink(target) == "/dev/null"


def test_a_symlink_to_a_file_is_written_through_when_asked(fault_proxy, seeded_repo, tmp_path):
    real = tmp_path / "real.tar"
    real.write_bytes(b"old")
    link = tmp_path / "link.tar"
    link.symlink_to(real)
    assert _pull(fault_proxy, seeded_repo, f"tar://{link}?overwrite=true").returncode == 0
    assert link.is_symlink() and tarfile.is_tarfile(real)


def test_tar_dash_writes_stdout_and_reads_stdin(fault_proxy, seeded_repo, tmp_path):
    piped = subprocess.run(
        [sys.executable, "-m", "occystrap", "--insecure", "process",
         f"registry://{fault_proxy.host}/{seeded_repo}:{TAG}", "tar://-"],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True,
        cwd=tmp_path,  # were `-` read as a file name, it would land here and be seen
    )  # fmt: skip
    assert tarfile.is_tarfile(io.BytesIO(piped.stdout))
    assert not [name for name in os.listdir(tmp_path) if name != "cache"]
    again = subprocess.run(
        [sys.executable, "-m", "occystrap", "process", "tar://-", f"tar://{tmp_path}/copy.tar"],
        input=piped.stdout, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    skopeo = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{tmp_path}/copy.tar"], capture_output=True
    )
    assert skopeo.returncode == 0, skopeo.stderr


def _two_image_archive(tmp_path: Path, fault_proxy, seeded_repo) -> Path:
    """A docker-save tarball holding two images (the seeded one under two names, the second
    with its own config), as `docker save a b` writes."""
    single = tmp_path / "one.tar"
    assert _pull(fault_proxy, seeded_repo, f"tar://{single}").returncode == 0
    with tarfile.open(single) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    manifest = json.loads(members["manifest.json"])
    first = manifest[0]
    config = json.loads(members[first["Config"]])
    config["config"] = {"Labels": {"which": "second"}}
    second_config = json.dumps(config).encode()
    second_name = hashlib.sha256(second_config).hexdigest() + ".json"
    members[second_name] = second_config
    second = {**first, "Config": second_name, "RepoTags": ["team/second:v2"]}
    first["RepoTags"] = ["team/first:v1"]
    members["manifest.json"] = json.dumps([first, second]).encode()
    both = tmp_path / "both.tar"
    with tarfile.open(both, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return both


def test_a_many_image_archive_names_its_images_and_takes_a_choice(
    fault_proxy, seeded_repo, tmp_path
):
    both = _two_image_archive(tmp_path, fault_proxy, seeded_repo)
    result = run_occystrap("info", f"tar://{both}", check=False)
    assert_one_line_error(result, "holds 2 images", "@0 team/first:v1", "@1 team/second:v2")
    for choice in ("?image=team/second:v2", "@1"):
        shown = run_occystrap("-O", "json", "info", f"tar://{both}{choice}")
        assert json.loads(shown.stdout)["labels"] == {"which": "second"}, choice
    first = run_occystrap("-O", "json", "info", f"tar://{both}@0")
    assert json.loads(first.stdout)["labels"] != {"which": "second"}
    assert_one_line_error(
        run_occystrap("info", f"tar://{both}@2", check=False), "no @2", "numbered from 0"
    )
    assert_one_line_error(
        run_occystrap("info", f"tar://{both}?image=team/third:v3", check=False),
        "no image tagged 'team/third:v3'",
    )
