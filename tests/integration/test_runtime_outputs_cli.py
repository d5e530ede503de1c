"""oci:// bundles run by the real runc, and mounts:// layers merged by the real overlayfs.

The image holds Debian's static busybox, written as a docker-save tarball; both tests need
root (runc, mount), as the suite has.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, registry_flags, run_occystrap
from tests.integration.images import run_skopeo
from tests.integration.servers import require_binary
from tests.unit.image_builder import make_image, save_tar

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
RUNC_TIMEOUT_SECONDS = 60
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:2345:\nextra:x:3456:app\n"
_container_ids = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _root_and_busybox() -> None:
    """Fail (never skip) without what these tests exercise."""
    if os.geteuid() != 0:
        pytest.fail("runc bundles and overlay mounts are tested as root")
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: install busybox-static")
    require_binary("runc")


def busybox_layers() -> list[dict]:
    """A lower layer with busybox, accounts and files; an upper one deleting and hiding some."""
    return [
        {
            "bin/": None,
            "bin/busybox": (BUSYBOX.read_bytes(), 0o755),
            "bin/sh": "busybox",
            "etc/": None,
            "etc/passwd": PASSWD,
            "etc/group": GROUP,
            "gone": b"deleted by the upper layer",
            "d/": None,
            "d/old": b"hidden by the opaque directory",
            "keep": b"lower",
        },
        {".wh.gone": b"", "d/": None, "d/.wh..wh..opq": b"", "d/new": b"new", "keep": b"upper"},
    ]


def busybox_tarball(directory: Path, **settings: object) -> Path:
    image = make_image(directory, busybox_layers(), settings=settings)
    path = directory / "image.tar"
    save_tar(image, path)
    return path


@pytest.fixture
def runc_run() -> Iterator:
    """Run a bundle under a fresh container id; every container is deleted afterwards."""
    started: list[str] = []

    def run(bundle: Path) -> subprocess.CompletedProcess:
        container = f"occystrap-test-{os.getpid()}-{next(_container_ids)}"
        started.append(container)
        return subprocess.run(
            ["runc", "run", "--bundle", str(bundle), container],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=RUNC_TIMEOUT_SECONDS,
            check=False,
        )

    yield run
    for container in started:
        subprocess.run(["runc", "delete", "-f", container], capture_output=True, check=False)


def test_bundle_runs_with_runc(tmp_path, runc_run):
    tarball = busybox_tarball(tmp_path, Cmd=["/bin/busybox", "echo", "hello from occystrap"])
    bundle = tmp_path / "bundle"
    run_occystrap("process", f"tar://{tarball}", f"oci://{bundle}")
    result = runc_run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from occystrap\n"


def test_bundle_from_a_registry_runs_with_runc(tmp_path, runc_run, registry_plain, unique_repo):
    """Layers streamed from a registry (pushed by skopeo) through the -j look-ahead."""
    tarball = busybox_tarball(tmp_path, Cmd=["/bin/sh", "-c", "echo pulled; cat /keep"])
    reference = f"{registry_plain.host}/{unique_repo}:1"
    run_skopeo(
        "copy", "--quiet", *registry_plain.skopeo_dest_args(),
        f"docker-archive:{tarball}", f"docker://{reference}",
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    run_occystrap(
        *registry_flags(registry_plain), "-j", "1", "process",
        f"registry://{reference}", f"oci://{bundle}",
    )  # fmt: skip
    result = runc_run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pulled\nupper"


@pytest.mark.parametrize(
    ("user", "identity"),
    [("", "0 0 0"), ("app", "1234 2345 2345 3456"), ("4321:3456", "4321 3456 3456")],
)
def test_env_workdir_user_and_whiteouts_reach_the_process(tmp_path, runc_run, user, identity):
    script = 'echo "$FOO"; pwd; echo $(id -u) $(id -g) $(id -G); ls /d; cat /keep; ls /gone'
    tarball = busybox_tarball(
        tmp_path,
        Entrypoint=["/bin/sh", "-c"],
        Cmd=[script],
        Env=["FOO=bar  baz"],
        WorkingDir="/srv/app",
        User=user,
    )
    bundle = tmp_path / "bundle"
    run_occystrap("process", f"tar://{tarball}", f"oci://{bundle}")
    result = runc_run(bundle)
    assert result.returncode != 0  # `ls /gone`: the whiteout deleted it
    assert "/gone" in result.stderr
    assert result.stdout.splitlines() == ["bar  baz", "/srv/app", identity, "new", "upper"]


def test_bundle_refuses_foreign_directories_and_unknown_users(tmp_path):
    tarball = busybox_tarball(tmp_path, Cmd=["/bin/true"], User="ghost")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run_occystrap("process", f"tar://{tarball}", f"oci://{foreign}", check=False)
    assert_one_line_error(result, str(foreign), "not an earlier occystrap")
    assert os.listdir(foreign) == ["notes.txt"]

    bundle = tmp_path / "bundle"
    result = run_occystrap("process", f"tar://{tarball}", f"oci://{bundle}", check=False)
    assert_one_line_error(result, "'ghost'", "/etc/passwd")
    assert not bundle.exists()
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"Cmd": "/bin/sh -c true"}, 'Cmd is "/bin/sh -c true", not a list of strings'),
        ({"Entrypoint": 7}, "Entrypoint is 7, not a list of strings"),
        ({"Cmd": ["/bin/true"], "Env": "PATH=/bin"}, 'Env is "PATH=/bin"'),
        ({"Cmd": ["/bin/true"], "Env": ["A=1", 123]}, 'Env is ["A=1", 123]'),
        ({"Cmd": ["/bin/true"], "Env": ["A=1", None]}, "not a list of strings"),
        ({"Cmd": ["/bin/true"], "Env": ["A=\u0000b"]}, "without NUL"),
        ({"Cmd": ["/bin/true"], "User": 0}, "User is 0, not a string"),
        ({"Cmd": ["/bin/true"], "Labels": {"a": 1}}, "Labels"),
    ],
    ids=[
        "string-cmd",
        "entrypoint-7",
        "string-env",
        "int-env",
        "null-env",
        "nul-env",
        "int-user",
        "int-label",
    ],  # fmt: skip
)
def test_a_config_of_the_wrong_shape_is_refused_in_one_line(tmp_path, settings, fragment):
    tarball = busybox_tarball(tmp_path, **settings)
    bundle = tmp_path / "bundle"
    result = run_occystrap("process", f"tar://{tarball}", f"oci://{bundle}", check=False)
    assert_one_line_error(result, fragment, "malformed")
    assert not bundle.exists()
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]


@pytest.fixture
def unmount_afterwards() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)


def test_a_mount_point_is_refused_before_anything_is_written(tmp_path, unmount_afterwards):
    tarball = busybox_tarball(tmp_path, Cmd=["/bin/true"])
    point = tmp_path / "point"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    unmount_afterwards.append(point)
    for scheme in ("oci", "mounts"):
        result = run_occystrap("process", f"tar://{tarball}", f"{scheme}://{point}", check=False)
        assert_one_line_error(result, str(point), "mount point")
    assert os.listdir(point) == []
    assert sorted(os.listdir(tmp_path)) == sorted(["point", "image.tar", *_blobs(tmp_path)])


def _blobs(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith("blob-")]


def test_mounts_layers_merge_with_overlayfs(tmp_path, unmount_afterwards):
    tarball = busybox_tarball(tmp_path, Cmd=["/bin/sh"])
    target = tmp_path / "mnt"
    result = run_occystrap("process", f"tar://{tarball}", f"mounts://{target}")
    command = result.stdout.strip()
    assert command == (target / "mount.sh").read_text().splitlines()[-1]
    assert shlex.split(command)[:4] == ["mount", "-t", "overlay", "overlay"]
    merged = target / "merged"
    unmount_afterwards.append(merged)
    subprocess.run(["sh", str(target / "mount.sh")], check=True, capture_output=True)
    assert os.path.ismount(merged)
    assert (merged / "keep").read_bytes() == b"upper"
    assert not (merged / "gone").exists()  # the whiteout hides the lower file
    assert os.listdir(merged / "d") == ["new"]  # the opaque directory hides d/old
    assert (merged / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    (merged / "written").write_text("goes to the upper directory")
    assert (target / "upper/written").is_file()

    again = run_occystrap("process", f"tar://{tarball}", f"mounts://{target}", check=False)
    assert_one_line_error(again, "in use by the mount", "umount")
    assert os.path.ismount(merged)

    subprocess.run(["umount", str(merged)], check=True)
    run_occystrap("process", f"tar://{tarball}", f"mounts://{target}")
    assert not (target / "upper/written").exists()


def test_many_layers_under_a_long_path_still_mount(tmp_path, unmount_afterwards):
    """Absolute lowerdir lists this long exceed the page of mount options the kernel takes."""
    count = 80
    layers: list[dict] = [{f"layer-{n}": b"", "top": str(n).encode()} for n in range(count)]
    layers[-1][".wh.layer-0"] = b""
    image = make_image(tmp_path, layers)
    tarball = tmp_path / "many.tar"
    save_tar(image, tarball)
    target = tmp_path / ("long-directory-name-" * 4) / "mnt"
    result = run_occystrap("process", f"tar://{tarball}", f"mounts://{target}")
    assert len((target / "lowerdir").read_text()) > 4096
    assert result.stdout.startswith(f"cd {target / 'layers'} && mount -t overlay")
    merged = target / "merged"
    unmount_afterwards.append(merged)
    subprocess.run(["sh", str(target / "mount.sh")], check=True, capture_output=True)
    assert (merged / "top").read_bytes() == str(count - 1).encode()
    assert sorted(os.listdir(merged)) == sorted(["top", *(f"layer-{n}" for n in range(1, count))])
