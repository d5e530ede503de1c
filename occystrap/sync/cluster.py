"""Running a sync's copies on a Dask cluster: one task per image (`pip install occystrap[dask]`).

The plan is made here, on the client; each worker runs `copy_image`, the same function the
embedded run calls, over a session of its own (one client per worker process and run).
Tasks carry URIs and settings without a credential in them: a worker reads its registries'
credentials from its own auth files. A worker that dies mid-copy loses its task to another
worker, which copies the image again (the target is written only once whole, and verified).

`--rate-limit` holds for the whole cluster: every worker books its send times in one place,
on the scheduler. Quota readings come back with each result, so the client's quota floor
sees what every worker saw.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from occystrap.errors import UsageError
from occystrap.middleware.quota import QuotaBook
from occystrap.middleware.ratelimit import RateLimiter, RateLimitPolicy, parse_rate_limits
from occystrap.middleware.retry import RetryBudget
from occystrap.registry.ledger import UploadLedger
from occystrap.settings import RunSettings
from occystrap.sync.run import CopySession, CopyTask, ImageResult, copy_image, open_session

LOG = logging.getLogger("occystrap.sync")
DASK_HINT = "--cluster needs Dask: pip install 'occystrap[dask]'"


def worker_settings(settings: RunSettings) -> RunSettings:
    """The run's settings as a task may carry them: every credential and token removed
    (workers read their own auth files)."""
    return replace(
        settings,
        username=None,
        password=None,
        src_creds=None,
        dest_creds=None,
        quay_token=None,
        rate_limits=(),  # the cluster's shared limiter stands for them
    )


# -- the cluster-wide rate limit -------------------------------------------------------------


def dask_lock(name: str, client: Any) -> Any:
    """A Dask Lock held on the scheduler, usable from any thread (not only Dask's own)."""
    from distributed import Lock

    return Lock(name, scheduler_rpc=client.scheduler, loop=client.loop)


class SharedLimiter(RateLimiter):
    """A RateLimiter whose next send time lives on the Dask scheduler (a Variable under a
    Lock), so every worker together keeps to the rate, and a dying worker takes none of it
    along."""

    def __init__(self, name: str, rate: float, client: Any) -> None:
        super().__init__(rate)
        self.name, self.client = name, client
        self._here = threading.Lock()  # one thread of this process at a time asks
        self._there = dask_lock(name, client)

    def _take(self) -> float:
        from distributed import Variable

        with self._here, self._there:
            variable = Variable(self.name, client=self.client)
            try:
                booked = float(variable.get(timeout=0))
            except TimeoutError:  # no request was sent yet
                booked = -math.inf
            slot = max(time.time(), booked)
            variable.set(slot + 1.0 / self.rate)
        return slot

    def acquire(self, on_wait: Callable[[float], None] | None = None) -> None:
        slot = self._take()
        if on_wait is not None and slot > time.time():
            on_wait(slot - time.time())
        while (remaining := slot - time.time()) > 0:
            time.sleep(remaining)


def shared_policy(rate_limits: Sequence[str], run_id: str, client: Any) -> RateLimitPolicy:
    """--rate-limit's policy with every limiter shared through the scheduler; `client`: a
    Dask client (any thread may take a turn, not only Dask's own)."""
    local = parse_rate_limits(list(rate_limits))
    overall = local.global_limiter
    prefix = f"occystrap-rate-{run_id}"
    return RateLimitPolicy(
        None if overall is None else SharedLimiter(f"{prefix}-*", overall.rate, client),
        {
            host: SharedLimiter(f"{prefix}-{host}", limiter.rate, client)
            for host, limiter in local.per_host.items()
        },
    )


# -- one upload per blob for the whole cluster -----------------------------------------------


class ClusterLedger(UploadLedger):
    """The upload ledger of a worker, whose turns and known locations are the cluster's: a
    Dask Lock per (registry, digest) and a Variable with the repositories holding it, so a
    blob shared by images on several workers still goes up once per destination registry."""

    def __init__(self, run_id: str, client: Any) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"occystrap-upload-{run_id}"
        self.names: set[str] = set()
        self._locks: dict[str, Any] = {}
        self._locks_lock = threading.Lock()

    def _name(self, registry: str, digest: str) -> str:
        return f"{self.prefix}-{registry}-{digest}"

    @contextmanager
    def turn(self, registry: str, digest: str) -> Iterator[None]:
        name = self._name(registry, digest)
        with self._locks_lock:
            if name not in self._locks:
                self._locks[name] = dask_lock(name, self.client)
        with super().turn(registry, digest), self._locks[name]:
            yield

    def record(self, registry: str, digest: str, repository: str) -> None:
        from distributed import Variable

        super().record(registry, digest, repository)
        name = self._name(registry, digest)
        self.names.add(name)
        Variable(name, client=self.client).set(self.repositories(registry, digest))

    def repositories(self, registry: str, digest: str) -> list[str]:
        from distributed import Variable

        try:
            elsewhere = list(
                Variable(self._name(registry, digest), client=self.client).get(timeout=0)
            )
        except TimeoutError:  # no worker has put it anywhere yet
            elsewhere = []
        return list(dict.fromkeys([*super().repositories(registry, digest), *elsewhere]))

    def forget(self) -> None:
        """Drop this worker's Variables from the scheduler (the run is over)."""
        from distributed import Variable

        for name in self.names:
            Variable(name, client=self.client).delete()
        for lock in self._locks.values():
            lock.close()


# -- the worker side -----------------------------------------------------------------------


@dataclass
class _WorkerRun:
    stack: ExitStack
    session: CopySession
    quota: QuotaBook


_RUNS: dict[str, _WorkerRun] = {}
_RUNS_LOCK = threading.Lock()


def _worker_run(run_id: str, settings: RunSettings, rate_limits: Sequence[str]) -> _WorkerRun:
    """This worker's session for `run_id`, opened at its first task."""
    from distributed import get_client

    from occystrap.middleware.builder import build_client

    with _RUNS_LOCK:
        if run_id not in _RUNS:
            client = get_client()  # in the task's thread, where Dask can tell which worker
            stack = ExitStack()
            quota = QuotaBook()
            chain = replace(settings.chain_settings(), quota=quota)
            if rate_limits:
                chain = replace(chain, rate_policy=shared_policy(rate_limits, run_id, client))
            http = stack.enter_context(build_client(chain))
            session = stack.enter_context(open_session(settings, http))
            ledger = ClusterLedger(run_id, client)
            stack.callback(ledger.forget)
            session.uploads = ledger
            _RUNS[run_id] = _WorkerRun(stack, session, quota)
        return _RUNS[run_id]


def copy_on_worker(
    task: CopyTask, settings: RunSettings, run_id: str, rate_limits: Sequence[str]
) -> ImageResult:
    """The Dask task: `copy_image` over this worker's session; the quota it saw comes back."""
    run = _worker_run(run_id, settings, rate_limits)
    result = copy_image(task, run.session)
    result.quota = run.quota.readings()
    return result


def close_worker_run(run_id: str) -> None:
    """Run on every worker at the end of a sync: its client and scratch space go."""
    with _RUNS_LOCK:
        run = _RUNS.pop(run_id, None)
    if run is not None:
        run.stack.close()


# -- the client side -----------------------------------------------------------------------


class DaskRunner:
    """Copies as tasks on a cluster, as many at once as the cluster has threads."""

    def __init__(
        self,
        client: Any,
        settings: RunSettings,
        quota: QuotaBook,
        budget: RetryBudget | None = None,
        run_id: str | None = None,
    ) -> None:
        self.client = client
        self.budget = budget
        self._tasks: dict[str, CopyTask] = {}
        self.settings = worker_settings(settings)
        self.run_id = run_id or uuid.uuid4().hex
        self.quota = quota
        self.rate_limits = tuple(settings.rate_limits)
        threads = sum(client.nthreads().values())
        self.slots = max(1, threads)

    def submit(self, task: CopyTask) -> Any:
        future = self.client.submit(
            copy_on_worker,
            task,
            self.settings,
            self.run_id,
            self.rate_limits,
            key=f"occystrap-copy-{uuid.uuid4().hex}",
            pure=False,
        )
        self._tasks[future.key] = task
        return future

    def wait_any(self, running: Sequence[Any]) -> list[Any]:
        from distributed import wait

        done, _ = wait(list(running), return_when="FIRST_COMPLETED")
        return list(done)

    def result(self, running: Any) -> ImageResult:
        task = self._tasks.pop(running.key)
        try:
            result: ImageResult = running.result()
        except Exception as exc:  # noqa: BLE001 - the task failed on every worker it reached
            from occystrap.bulk import describe_failure

            shown = task.shown or task.source
            return ImageResult(shown, task.target, "failed", error=describe_failure(exc))
        self.quota.merge(result.quota)
        if self.budget is not None:
            self.budget.charge(result.retries)
        return result

    def close(self) -> None:
        self.client.run(close_worker_run, self.run_id)


@contextmanager
def open_cluster(address: str) -> Iterator[Any]:
    """A Dask client: `tcp://HOST:PORT` (a running scheduler) or `local:N` (N worker
    processes started here, stopped at the end)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError(DASK_HINT) from None
    if address.startswith("local:"):
        count = address.partition(":")[2]
        if not count.isdigit() or not 0 < int(count) <= 256:
            raise UsageError(f"--cluster {address!r}: expected local:N with N from 1 to 256")
        with (
            LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    if not address.startswith(("tcp://", "tls://")):
        raise UsageError(
            f"--cluster {address!r}: expected tcp://SCHEDULER:PORT, tls://SCHEDULER:PORT or local:N"
        )
    try:
        client = Client(address, timeout=30)
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield client
