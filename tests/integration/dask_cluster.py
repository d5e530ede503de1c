"""A real Dask cluster for the tests: `dask scheduler` and `dask worker` processes on
loopback, each stopped by its PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.integration.cli import REPO_ROOT
from tests.integration.servers import free_port

START_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 20.0


def _dask_command() -> list[str]:
    found = shutil.which("dask")
    if found is None:
        raise RuntimeError(
            "the dask command is missing: run the test command from README.md (it installs"
            " occystrap[dask])"
        )
    return [found]


class DaskCluster:
    """A scheduler and `workers` worker processes (no nanny: a killed worker stays dead)."""

    def __init__(self, workdir: Path, workers: int = 2, threads: int = 2) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.threads = threads
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self._initial_workers = workers
        # Workers import occystrap from this checkout, as the client does.
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _spawn(self, *args: str, log: str) -> subprocess.Popen:
        with open(self.workdir / log, "ab") as out:
            process = subprocess.Popen(
                [*_dask_command(), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.workdir,
            )
        self.processes.append(process)
        return process

    def start(self) -> DaskCluster:
        self._spawn(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-dashboard",
            log="scheduler.log",
        )
        for _ in range(self._initial_workers):
            self.add_worker()
        self.wait_for_workers(self._initial_workers)
        return self

    def add_worker(self) -> subprocess.Popen:
        number = len(self.workers)
        local = self.workdir / f"worker-{number}"
        local.mkdir(exist_ok=True)
        worker = self._spawn(
            "worker",
            self.address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            str(self.threads),
            "--no-nanny",
            "--no-dashboard",
            "--local-directory",
            str(local),
            "--name",
            f"test-worker-{number}",
            log=f"worker-{number}.log",
        )
        self.workers.append(worker)
        return worker

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=START_DEADLINE_SECONDS)

    def wait_for_workers(self, count: int) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=START_DEADLINE_SECONDS)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> PID, as each worker reports it."""
        with self.client() as client:
            return client.run(os.getpid)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()

    def __enter__(self) -> DaskCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()
