"""docker:// against real daemons: Debian's dockerd and Podman's Docker-compatible API, each
on a private socket. Images are built here (nothing is downloaded) and checked with skopeo.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import socketserver
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, assert_one_line_error, run_occystrap
from tests.integration.daemons import DockerDaemon, PodmanService
from tests.integration.images import (
    build_oci_layout,
    docker_save_blob_bytes,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

_seeds = itertools.count(1000)
_names = itertools.count()


def unique_name(prefix: str) -> str:
    return f"occystrap-test/{prefix}-{next(_names)}"


def source_tarball(tmp_path: Path, repo_tag: str, layers: int = 3) -> tuple[Path, str, list[str]]:
    """A docker-archive written by skopeo (an independent tool) from gzip layers of random
    bytes no other test uses; returns it with its config digest and diff_ids."""
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(4096 * (i + 1), next(_seeds)) for i in range(layers)])
    tarball = tmp_path / "source.tar"
    run_skopeo("copy", "--quiet", f"oci:{layout}:latest", f"docker-archive:{tarball}:{repo_tag}")
    return (tarball, *archive_facts(tarball))


def archive_facts(tarball: Path) -> tuple[str, list[str]]:
    """The config digest and layer diff_ids skopeo reads from a docker-archive."""
    raw = json.loads(run_skopeo("inspect", "--raw", f"docker-archive:{tarball}").stdout)
    config = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{tarball}").stdout)
    return raw["config"]["digest"], config["rootfs"]["diff_ids"]


def repo_tags(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        return json.load(member)[0]["RepoTags"]


def listed(daemon, name: str) -> dict:
    """What the daemon itself says about NAME (through a plain client, not occystrap)."""
    with daemon.client() as client:
        response = client.get(f"/images/{name}/json")
    assert response.status_code == 200, f"{name}: {response.text}"
    return response.json()


def uri(daemon, name: str) -> str:
    return f"docker://{name}?socket={daemon.socket}"


@pytest.fixture(params=["dockerd", "podman"])
def daemon(request) -> DockerDaemon | PodmanService:
    return request.getfixturevalue("dockerd" if request.param == "dockerd" else "podman_service")


def test_round_trip_tar_daemon_daemon_tar_keeps_the_image(daemon, tmp_path):
    first, second = unique_name("first") + ":v1", unique_name("second") + ":v2"
    tarball, config_digest, diff_ids = source_tarball(tmp_path, "occystrap-test/source:v0")

    loaded = run_occystrap("-O", "json", "process", f"tar://{tarball}", uri(daemon, first))
    assert config_digest in loaded.stderr  # the image ID the daemon gives it
    # What the daemon was given to store: the config and layer tars, as in the tarball.
    assert json.loads(loaded.stdout)["bytes"]["uploaded"] == docker_save_blob_bytes(tarball)
    assert listed(daemon, first)["RootFS"]["Layers"] == diff_ids

    run_occystrap("process", uri(daemon, first), uri(daemon, second))
    assert listed(daemon, second)["RootFS"]["Layers"] == diff_ids

    out = tmp_path / "out.tar"
    run_occystrap("process", uri(daemon, second), f"tar://{out}")
    assert archive_facts(out) == (config_digest, diff_ids)
    assert repo_tags(out) == [second]  # named as the source URI says, not as the daemon does
    run_skopeo("copy", "--quiet", f"docker-archive:{out}", f"dir:{tmp_path / 'verified'}")


def test_dockerd_to_podman_and_back(dockerd, podman_service, tmp_path):
    name = unique_name("travel") + ":v1"
    tarball, config_digest, diff_ids = source_tarball(tmp_path, name, layers=2)
    run_occystrap("process", f"tar://{tarball}", uri(dockerd, name))
    run_occystrap("process", uri(dockerd, name), uri(podman_service, name))
    assert listed(podman_service, name)["RootFS"]["Layers"] == diff_ids
    back = unique_name("back")  # no tag: latest
    run_occystrap("process", uri(podman_service, name), uri(dockerd, back))
    assert listed(dockerd, f"{back}:latest")["Id"] == config_digest


def test_daemon_to_registry_and_back(dockerd, registry_plain, unique_repo, tmp_path):
    name = unique_name("pushed") + ":v1"
    tarball, config_digest, diff_ids = source_tarball(tmp_path, name, layers=2)
    run_occystrap("process", f"tar://{tarball}", uri(dockerd, name))
    target = f"{registry_plain.host}/{unique_repo}:v1"
    run_occystrap("--insecure", "process", uri(dockerd, name), f"registry://{target}")
    pushed = skopeo_inspect(registry_plain, f"{unique_repo}:v1", config=True)
    assert pushed["rootfs"]["diff_ids"] == diff_ids
    raw = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    assert raw["config"]["digest"] == config_digest
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    back = unique_name("pulled") + ":v1"
    run_occystrap("--insecure", "process", f"registry://{target}", uri(dockerd, back))
    assert listed(dockerd, back)["Id"] == config_digest


def test_dockerd_pulls_a_layer_pushed_with_stored_blocks(
    dockerd, registry_plain, unique_repo, tmp_path
):
    """Docker's own gzip reader (not occystrap's, not skopeo's) takes a layer whose random
    megabytes went as stored deflate blocks beside deflated text, to the diff_id it names."""
    name = unique_name("stored") + ":v1"
    files = {
        **random_layer(3 * 1024 * 1024, next(_seeds), "model.bin"),
        "a.txt": b"text " * 200_000,
    }
    layout = tmp_path / "layout"
    build_oci_layout(layout, [files])
    tarball = tmp_path / "source.tar"
    run_skopeo("copy", "--quiet", f"oci:{layout}:latest", f"docker-archive:{tarball}:{name}")
    config_digest, diff_ids = archive_facts(tarball)
    target = f"{registry_plain.host}/{unique_repo}"
    run_occystrap("--insecure", "process", f"tar://{tarball}", f"registry://{target}:v1")
    with dockerd.client() as client:
        response = client.post(
            "/images/create", params={"fromImage": target, "tag": "v1"}, timeout=120
        )
    assert response.status_code == 200, response.text
    assert '"error' not in response.text, response.text
    pulled = listed(dockerd, f"{target}:v1")
    assert pulled["RootFS"]["Layers"] == diff_ids
    assert pulled["Id"] == config_digest


def test_docker_host_names_the_socket(dockerd, tmp_path):
    name = unique_name("env") + ":v1"
    tarball, config_digest, _ = source_tarball(tmp_path, "occystrap-test/env-source:v1", 1)
    env = {"DOCKER_HOST": f"unix://{dockerd.socket}"}
    run_occystrap("process", f"tar://{tarball}", f"docker://{name}", env=env)
    assert listed(dockerd, name)["Id"] == config_digest
    out = tmp_path / "out.tar"
    run_occystrap("process", f"docker://{name}", f"tar://{out}", env=env)
    assert archive_facts(out)[0] == config_digest


def test_info_reads_a_daemon_image(dockerd, tmp_path):
    name = unique_name("info") + ":v1"
    tarball, config_digest, diff_ids = source_tarball(tmp_path, name, layers=2)
    run_occystrap("process", f"tar://{tarball}", uri(dockerd, name))
    result = run_occystrap("--output-format", "json", "info", uri(dockerd, name))
    info = json.loads(result.stdout)
    assert info["config_digest"] == config_digest
    assert [layer["diff_id"] for layer in info["layers"]] == diff_ids


# VmHWM, not getrusage: ru_maxrss survives exec, so it would count the forking test's memory.
_MEASURED = """
import runpy, sys
sys.argv = ["occystrap", *sys.argv[2:]]
try:
    runpy.run_module("occystrap", run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(REPORT, "w") as report:
        report.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""


def peak_memory_kib(tmp_path: Path, *args: str) -> int:
    """Run the CLI and return its peak resident memory (KiB)."""
    report = tmp_path / f"rss-{next(_names)}"
    code = _MEASURED.replace("REPORT", repr(str(report)))
    subprocess.run(
        [sys.executable, "-c", code, "-", *args],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    return int(report.read_text())


def test_layers_stream_through_without_being_held_in_memory(dockerd, tmp_path):
    """A 40 MiB layer in and out of the daemon costs far less than 40 MiB of memory more
    than a tiny image does: the export is spooled to disk, the load written through a pipe."""
    small_name, big_name = unique_name("small") + ":v1", unique_name("big") + ":v1"
    small, _, _ = source_tarball(tmp_path / "small", small_name, layers=1)
    layout = tmp_path / "big" / "layout"
    build_oci_layout(layout, [random_layer(40 << 20, next(_seeds))], compression="none")
    big = tmp_path / "big" / "source.tar"
    run_skopeo("copy", "--quiet", f"oci:{layout}:latest", f"docker-archive:{big}:{big_name}")
    baseline = peak_memory_kib(tmp_path, "process", f"tar://{small}", uri(dockerd, small_name))
    loading = peak_memory_kib(tmp_path, "process", f"tar://{big}", uri(dockerd, big_name))
    exporting = peak_memory_kib(
        tmp_path, "process", uri(dockerd, big_name), f"tar://{tmp_path}/o.tar"
    )
    assert loading - baseline < 16 << 10, (baseline, loading)
    assert exporting - baseline < 16 << 10, (baseline, exporting)
    assert archive_facts(tmp_path / "o.tar") == archive_facts(big)


# -- one-line errors ------------------------------------------------------------------------


def test_missing_image(daemon, tmp_path):
    result = run_occystrap(
        "process", uri(daemon, "occystrap-test/absent:v1"), f"tar://{tmp_path}/out.tar", check=False
    )
    assert_one_line_error(
        result, f"no image occystrap-test/absent:v1 in the daemon at {daemon.socket}"
    )


def test_missing_socket(tmp_path):
    result = run_occystrap(
        "process",
        f"docker://busybox?socket={tmp_path}/none.sock",
        f"tar://{tmp_path}/out.tar",
        check=False,
    )
    assert_one_line_error(result, f"no daemon socket at {tmp_path}/none.sock", "?socket=PATH")


def test_socket_of_a_daemon_that_is_not_docker(dockerd, tmp_path):
    """dockerd's own containerd answers gRPC on its socket: a real daemon, not Docker's API."""
    containerd = dockerd.workdir / "exec" / "containerd" / "containerd.sock"
    assert containerd.is_socket()
    result = run_occystrap(
        "process", f"docker://busybox?socket={containerd}", f"tar://{tmp_path}/out.tar", check=False
    )
    assert_one_line_error(result, f"{containerd} (from ?socket=) is not a Docker Engine API socket")


def test_socket_without_permission(tmp_path):
    """Without CAP_DAC_OVERRIDE, root may not connect to another user's private socket."""
    path = tmp_path / "private.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        os.chown(path, 65534, 65534)
        os.chmod(path, 0o600)
        result = subprocess.run(
            [
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                sys.executable,
                "-m",
                "occystrap",
                "process",
                f"docker://busybox?socket={path}",
                f"tar://{tmp_path}/out.tar",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert_one_line_error(result, f"permission denied on the daemon socket {path}")


def test_corrupt_layer_stops_the_load_and_the_daemon_keeps_nothing(daemon, tmp_path):
    """A layer that fails its digest mid-stream ends the upload with our error; the daemon,
    given a cut tarball, does not list the image."""
    name = unique_name("corrupt") + ":v1"
    tarball, _, diff_ids = source_tarball(tmp_path, "occystrap-test/corrupt-source:v1", 2)
    with tarfile.open(tarball) as archive:
        layer = archive.getmember(f"{diff_ids[1].partition(':')[2]}.tar")
    with open(tarball, "r+b") as handle:
        handle.seek(layer.offset_data + layer.size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = run_occystrap("process", f"tar://{tarball}", uri(daemon, name), check=False)
    assert_one_line_error(result, f"layer {diff_ids[1]}", "hashes to")
    with daemon.client() as client:
        assert client.get(f"/images/{name}/json").status_code == 404


def test_daemon_refusing_the_load_is_one_line(dockerd, tmp_path):
    """dockerd on Linux refuses a Windows image, in the JSON lines of its load response."""
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(2048, next(_seeds))], platform=("windows", "amd64"))
    tarball = tmp_path / "windows.tar"
    run_skopeo("copy", "--quiet", f"oci:{layout}:latest", f"docker-archive:{tarball}:w/w:1")
    name = unique_name("windows") + ":v1"
    result = run_occystrap("process", f"tar://{tarball}", uri(dockerd, name), check=False)
    assert_one_line_error(
        result, f"the daemon at {dockerd.socket} failed to load {name}", "windows image on linux"
    )


def test_daemon_failing_an_export_gives_its_message(dockerd, tmp_path):
    """A layer whose files vanished from dockerd's storage: it answers 500 and a JSON message."""
    name = unique_name("broken") + ":v1"
    tarball, _, diff_ids = source_tarball(tmp_path, name, layers=1)
    run_occystrap("process", f"tar://{tarball}", uri(dockerd, name))
    layerdb = dockerd.workdir / "data" / "image" / "vfs" / "layerdb" / "sha256"
    (chain,) = [d for d in layerdb.iterdir() if (d / "diff").read_text() == diff_ids[0]]
    storage = dockerd.workdir / "data" / "vfs" / "dir" / (chain / "cache-id").read_text()
    (storage / "random.bin").unlink()
    result = run_occystrap("process", uri(dockerd, name), f"tar://{tmp_path}/x.tar", check=False)
    assert_one_line_error(
        result, f"the daemon at {dockerd.socket} failed to export {name}:", "random.bin"
    )
    assert not (tmp_path / "x.tar").exists()


class _DaemonKilledMidTransfer(socketserver.StreamRequestHandler):
    """Answers as dockerd does (ping, image description), then dies part way through an
    export or a load: the connection is cut with the body half sent, or half read."""

    def handle(self) -> None:
        request_line = self.rfile.readline().decode()
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        path = request_line.split()[1]
        if path == "/_ping":
            self._answer(b"OK", "Api-Version: 1.41\r\n")
        elif path.endswith("/json"):
            self._answer(json.dumps({"Id": "sha256:" + "a" * 64}).encode())
        elif path.endswith("/get"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            self.wfile.write(bytes(10_000))  # then killed
        else:  # POST /images/load: read a little of the tarball, then killed
            self.rfile.read(min(length, 10_000) or 10_000)
        self.request.shutdown(socket.SHUT_RDWR)

    def _answer(self, body: bytes, extra: str = "") -> None:
        head = f"HTTP/1.1 200 OK\r\n{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.wfile.write(head.encode() + body)


@pytest.mark.parametrize("direction", ["export", "load"])
def test_a_daemon_killed_mid_transfer_is_said_to_have_gone_away(tmp_path, direction):
    """Not "is not a Docker Engine API socket": it answered as one, then went away."""
    path = tmp_path / "dies.sock"
    server = socketserver.ThreadingUnixStreamServer(str(path), _DaemonKilledMidTransfer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        daemon_end = f"docker://team/app:v1?socket={path}"
        if direction == "export":
            result = run_occystrap("process", daemon_end, f"tar://{tmp_path}/out.tar", check=False)
        else:
            source, _, _ = source_tarball(tmp_path, "team/app:v1")
            result = run_occystrap("process", f"tar://{source}", daemon_end, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line_error(result, f"the daemon at {path}", "went away")
    assert "is not a Docker Engine API socket" not in result.stderr
    assert not (tmp_path / "out.tar").exists()
