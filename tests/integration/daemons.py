"""Launch real container daemons on private Unix sockets: Debian's dockerd and Podman's
Docker-compatible API service, each with its own storage, so tests never touch the machine's.

Both are stopped by their PID (SIGTERM, then SIGKILL); dockerd stops the containerd it
started itself under its private exec root.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.integration.servers import require_binary

DOCKERD_BINARY = "/usr/sbin/dockerd"
PODMAN_BINARY = "/usr/bin/podman"
START_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 20.0


class DaemonStartError(RuntimeError):
    """The daemon exited or never answered /_ping."""


class _Daemon:
    """One daemon process answering the Docker Engine API on `socket`."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "api.sock"
        self._log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables added to the daemon's environment."""
        return {}

    def start(self) -> _Daemon:
        if os.geteuid() != 0:
            raise DaemonStartError(f"{self.name} needs root here: run the suite as root")
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                env={**os.environ, **self.environment()},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of pytest reaches it only through stop()
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://daemon") as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise DaemonStartError(
                        f"{self.name} exited with {self._process.returncode}: {self.log_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/_ping", timeout=2.0).status_code == 200:
                        return
                time.sleep(0.1)
        raise DaemonStartError(
            f"{self.name} did not answer within {START_DEADLINE_SECONDS}s: {self.log_text()}"
        )

    def log_text(self) -> str:
        """The daemon's output, trimmed to the end, where the reason it failed is."""
        if not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def client(self) -> httpx.Client:
        """A plain client on the socket, for checks outside occystrap."""
        transport = httpx.HTTPTransport(uds=str(self.socket))
        return httpx.Client(transport=transport, base_url="http://daemon", timeout=120)

    def __enter__(self) -> _Daemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class DockerDaemon(_Daemon):
    """Debian's dockerd: vfs storage, no networking set-up, its own containerd."""

    name = "dockerd"

    def command(self) -> list[str]:
        config = self.workdir / "daemon.json"
        # Not /etc/docker/daemon.json; and its trust key here, not in /etc/docker/key.json.
        config.write_text(json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}))
        return [
            require_binary(DOCKERD_BINARY),
            f"--host=unix://{self.socket}",
            f"--config-file={config}",
            f"--data-root={self.workdir / 'data'}",
            f"--exec-root={self.workdir / 'exec'}",
            f"--pidfile={self.workdir / 'dockerd.pid'}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ]

    def stop(self) -> None:
        """Stop dockerd, then what a killed dockerd leaves: the containerd it started and the
        private bind mount it puts on its data root."""
        containerd = self._containerd_pid()
        super().stop()
        if containerd is not None:
            _stop_orphan(containerd)
        data_root = self.workdir / "data"
        if _is_mount_point(data_root):
            subprocess.run(["umount", str(data_root)], check=False, capture_output=True)

    def _containerd_pid(self) -> int | None:
        """containerd's PID from its pid file, if that process is still the one we started."""
        try:
            pid = int((self.workdir / "exec" / "containerd" / "containerd.pid").read_text())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.workdir).encode() in command_line else None


def _is_mount_point(path: Path) -> bool:
    """Whether something is mounted on `path`: a bind mount of the same filesystem too, which
    `os.path.ismount` cannot see."""
    mount_points = (
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    return str(path) in mount_points


def _stop_orphan(pid: int) -> None:
    """Stop a process that is not our child (so cannot be waited for) by its PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS / 2
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


class PodmanService(_Daemon):
    """`podman system service`: Podman's Docker-compatible API, with private storage."""

    name = "podman"

    def environment(self) -> dict[str, str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        return {"TMPDIR": str(tmp)}  # where it spools uploaded tarballs, not /var/tmp

    def command(self) -> list[str]:
        return [
            require_binary(PODMAN_BINARY),
            f"--root={self.workdir / 'root'}",
            f"--runroot={self.workdir / 'run'}",
            f"--tmpdir={self.workdir / 'tmp'}",
            "--storage-driver=vfs",
            "--events-backend=file",
            "--cgroup-manager=cgroupfs",
            "system",
            "service",
            "--time=0",
            f"unix://{self.socket}",
        ]
