"""Ctrl-C while layers trickle in: the real CLI exits 130 within seconds, leaving nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from tests.integration.cli import REPO_ROOT
from tests.integration.fault_proxy import BLOB_PATH, ForwardingServer
from tests.integration.images import build_oci_layout, random_layer
from tests.integration.pull_checks import TAG, seed_image


def interrupt_once(
    command: list[str], stop: int, started: Callable[[], bool], never_started: str
) -> tuple[int, float, str]:
    """Run `command`, send it `stop` half a second after `started()` holds (well into the
    transfer), and return its exit status, how long it took to exit, and its stderr."""
    # stderr is asserted exactly: no progress lines, should a slow machine stretch the run
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OCCYSTRAP_PROGRESS": "none"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 30
        while not started():
            assert time.monotonic() < deadline, never_started
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        time.sleep(0.5)  # into the transfer: layers trickling, or the sender blocked
        process.send_signal(stop)
        interrupted_at = time.monotonic()
        exited = process.wait(timeout=15)
        took = time.monotonic() - interrupted_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return exited, took, process.stderr.read()


pytestmark = pytest.mark.integration

TRICKLE_BYTES = 4096
TRICKLE_PAUSE = 0.2  # ~20 kB/s: a 3 MB layer would take minutes


class TrickleProxy(ForwardingServer):
    """Forwards everything, but sends blob bodies a few bytes at a time (a slow server)."""

    def handle(self, handler) -> None:
        if handler.command != "GET" or not BLOB_PATH.search(handler.path):
            super().handle(handler)
            return
        self._record(handler, "forwarded")
        upstream = self.upstream_connection()
        try:
            upstream.request("GET", handler.path, headers=dict(handler.headers.items()))
            response = upstream.getresponse()
            handler.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding"):
                    handler.send_header(name, value)
            handler.end_headers()
            while chunk := response.read(TRICKLE_BYTES):
                handler.wfile.write(chunk)
                handler.wfile.flush()
                time.sleep(TRICKLE_PAUSE)
        finally:
            upstream.close()


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
@pytest.mark.parametrize(
    "destination",
    [
        "tar://{out}/image.tar",
        "dir://{out}/image?expand=true",
        "oci-layout://{out}/layout",
        "registry://{registry}/copy:v1",
    ],
)
def test_ctrl_c_stops_a_slow_pull_at_once_and_cleans_up(
    registry_plain, unique_repo, tmp_path, destination, stop, status, said
):
    """SIGTERM (kill, a CI timeout) is handled as Ctrl-C is: no .partial-* file beside the
    target, nothing in the temp dir, no skeleton directory; only the exit status differs."""
    layers = [random_layer(3_000_000, n, name=f"big{n}.bin") for n in range(3)]
    seed_image(registry_plain, unique_repo, tmp_path, layers)
    out, temp = tmp_path / "out", tmp_path / "temp"
    out.mkdir()
    temp.mkdir()
    with TrickleProxy(registry_plain.url) as proxy:
        command = [
            sys.executable,
            "-m",
            "occystrap",
            "--insecure",
            "--temp-dir",
            str(temp),
            "process",
            f"registry://{proxy.host}/{unique_repo}:{TAG}",
            destination.format(out=out, registry=registry_plain.host),
        ]
        exited, took, stderr = interrupt_once(
            command,
            stop,
            lambda: len(proxy.requests_matching(r"/blobs/sha256:", method="GET")) >= 3,
            "the layer downloads never started",
        )
    assert exited == status, stderr
    assert took < 3, f"exit took {took:.1f} s"
    assert stderr.strip().splitlines() == [f"occystrap: error: {said}"], stderr
    assert os.listdir(temp) == []
    assert os.listdir(out) == []  # no .image.tar.partial-*, no skeleton dir:// or layout


def test_cancelling_one_library_copy_leaves_another_in_the_process_to_finish(
    registry_plain, unique_repo, tmp_path
):
    """Two copies in one process (a library caller's, a Dask worker's tasks): cancelling
    one stops it promptly, leaving nothing, while the other carries on to the end."""
    from occystrap import RunSettings, library
    from occystrap.cancel import Cancellation, Cancelled

    big, small = f"{unique_repo}-big", f"{unique_repo}-small"
    seed_image(registry_plain, big, tmp_path, [random_layer(3_000_000, 1, name="big.bin")])
    seed_image(registry_plain, small, tmp_path, [random_layer(40_000, 2, name="small.bin")])
    out_big, out_small = tmp_path / "big", tmp_path / "small"
    out_big.mkdir()
    out_small.mkdir()
    settings = RunSettings(insecure=True)
    stopped, carried_on = Cancellation(), Cancellation()
    outcomes: dict[str, object] = {}

    def copy(name: str, repo: str, out, cancellation: Cancellation) -> None:
        try:
            outcomes[name] = library.copy(
                f"registry://{proxy.host}/{repo}:{TAG}",
                f"tar://{out}/image.tar",
                settings,
                cancellation=cancellation,
            )
        except Exception as error:  # noqa: BLE001 - the test looks at what each copy ended with
            outcomes[name] = error

    with TrickleProxy(registry_plain.url) as proxy:
        copies = {
            "big": threading.Thread(target=copy, args=("big", big, out_big, stopped)),
            "small": threading.Thread(target=copy, args=("small", small, out_small, carried_on)),
        }
        for thread in copies.values():
            thread.start()
        deadline = time.monotonic() + 30
        # Both copies are downloading (the big one its config and its layer) when one stops.
        while len(
            proxy.requests_matching(rf"/{big}/blobs/sha256:", method="GET")
        ) < 2 or not proxy.requests_matching(rf"/{small}/blobs/sha256:", method="GET"):
            assert time.monotonic() < deadline, "the layer downloads never started"
            time.sleep(0.05)
        stopped.cancel()
        cancelled_at = time.monotonic()
        copies["big"].join(10)
        took = time.monotonic() - cancelled_at
        small_still_running = copies["small"].is_alive()
        copies["small"].join(30)
    assert isinstance(outcomes["big"], Cancelled), outcomes["big"]
    assert took < 3, f"the cancelled copy took {took:.1f} s to stop"
    assert os.listdir(out_big) == []
    assert not isinstance(outcomes["small"], BaseException), outcomes["small"]
    assert not carried_on.is_set()
    assert outcomes["small"].layers == 1
    assert small_still_running  # it really ran beside the cancelled one
    assert (out_small / "image.tar").stat().st_size > 40_000


class StallingProxy(ForwardingServer):
    """Forwards everything but the upload of a blob's bytes, which it never reads: the
    client's send blocks once the socket buffers are full (a stalled registry)."""

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url)
        self.released = threading.Event()

    def handle(self, handler) -> None:
        if handler.command in ("PUT", "PATCH") and handler.carries_body():
            self._record(handler, "stalled")
            self.released.wait(60)
            return
        super().handle(handler)

    def stop(self) -> None:
        self.released.set()
        super().stop()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_a_stalled_push_as_fast_as_a_pull(registry_plain, unique_repo, tmp_path, stop):
    """A push blocked in sending a layer the registry no longer reads stops within
    moments too: the run's connections are cut, not waited for."""
    source = tmp_path / "layout"
    build_oci_layout(source, [random_layer(24_000_000, 7, name="big.bin")])
    with StallingProxy(registry_plain.url) as proxy:
        command = [sys.executable, "-m", "occystrap", "--insecure", "process"]
        command += [f"oci-layout://{source}", f"registry://{proxy.host}/{unique_repo}:v1"]
        exited, took, stderr = interrupt_once(
            command,
            stop,
            lambda: bool(
                proxy.requests_matching(r"/blobs/uploads/", method="PUT")
                + proxy.requests_matching(r"/blobs/uploads/", method="PATCH")
            ),
            "the upload never started",
        )
    assert exited == 128 + stop, stderr
    said = "interrupted" if stop == signal.SIGINT else "terminated"
    assert stderr.strip().splitlines() == [f"occystrap: error: {said}"], stderr
    assert took < 1.5, f"exit took {took:.2f} s"  # it was 2 s: two one-second graces
