"""`sync` as a library call: plan, then copy what differs, then prune; typed results."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

from occystrap.atomic import work_directory
from occystrap.cancel import Cancellation, cancellable_pool
from occystrap.middleware.builder import ChainClient, build_client
from occystrap.middleware.quota import QuotaBook
from occystrap.middleware.ratelimit import RateLimitPolicy
from occystrap.middleware.retry import RetryBudget
from occystrap.pipeline import RunContext
from occystrap.settings import RunSettings
from occystrap.sync.cluster import DaskRunner, open_cluster, shared_policy
from occystrap.sync.config import SyncSpec
from occystrap.sync.plan import FAILED, PlannedImage, Planner, SyncPlan, split_host
from occystrap.sync.run import (
    DEFERRED,
    Gate,
    ImageResult,
    RunOptions,
    ThreadRunner,
    open_session,
    prune,
    run_copies,
)

LOG = logging.getLogger("occystrap.sync")


@dataclass
class SyncOptions:
    dry_run: bool = False
    prune: bool = False
    keep_going: bool = False
    image_parallel: int = 3  # images at once (embedded runner)
    quota_floor: int = 5  # start no image from a registry with this few pulls left
    retry_budget: int | None = None  # retries in all for the run; None: no limit
    cluster: str | None = None  # tcp://SCHEDULER:PORT or local:N; None: this process


@dataclass
class SyncOutcome:
    plan: SyncPlan
    results: list[ImageResult] = field(default_factory=list)
    retries: int = 0

    @property
    def failed(self) -> bool:
        return any(result.status == FAILED for result in self.results)

    @property
    def deferred(self) -> bool:
        return any(result.status == DEFERRED for result in self.results)


class QuotaGate:
    """No new image from a registry whose stated pull quota is down to the floor."""

    def __init__(self, book: QuotaBook, floor: int) -> None:
        self.book, self.floor = book, floor

    def holds(self, image: PlannedImage) -> str | None:
        reading = self.book.reading(image.source_registry)
        if reading is None or reading.remaining > self.floor:
            return None
        when = ""
        if reading.resets is not None:
            stamp = datetime.datetime.fromtimestamp(reading.resets, datetime.UTC)
            when = f"; its window resets by {stamp.isoformat(timespec='seconds')}"
        return (
            f"{reading.host} has {reading.remaining} pulls left (--quota-floor"
            f" {self.floor}){when}: run again then"
        )


class BudgetGate:
    """No new image once the run's retry budget is spent: the registry is failing."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def holds(self, image: PlannedImage) -> str | None:
        if not self.budget.exhausted:
            return None
        return f"the retry budget ({self.budget.limit} retries) is spent; run again later"


@contextmanager
def sync_client(
    settings: RunSettings,
    spec: SyncSpec,
    quota: QuotaBook | None = None,
    budget: RetryBudget | None = None,
    rate_policy: RateLimitPolicy | None = None,
    cancellation: Cancellation | None = None,
) -> Iterator[ChainClient]:
    """The run's one client, with --src-creds for every source host and --dest-creds for
    every target host (and a skopeo file's credentials for its hosts); `rate_policy`: a
    cluster's shared limiters."""
    sources = [split_host(rule.source) for rule in spec.rules]
    targets = [split_host(rule.target) for rule in spec.rules]
    chain = settings.ends_chain_settings(sources, targets, extra=spec.credentials)
    chain = replace(
        chain,
        quota=quota,
        retry_budget=budget,
        rate_policy=rate_policy,
        cancellation=cancellation or Cancellation(),
    )
    with build_client(chain) as http:
        yield http


@contextmanager
def planning_context(
    settings: RunSettings, http: ChainClient, cancellation: Cancellation | None = None
) -> Iterator[RunContext]:
    """What the planner reads targets through: the run's client (and, for a bucket's
    `index.json`, the run's settings)."""
    with work_directory(settings.temp_dir, "occystrap-plan-") as work:
        yield RunContext(settings, http, work, cancellation=cancellation or Cancellation())


def plan_sync(settings: RunSettings, spec: SyncSpec, prune_stale: bool = False) -> SyncPlan:
    with sync_client(settings, spec) as http, planning_context(settings, http) as ctx:
        return Planner(ctx, prune_stale).plan(spec)


def sync(
    settings: RunSettings,
    spec: SyncSpec,
    options: SyncOptions,
    on_result: Callable[[ImageResult], None] = lambda result: None,
    cancellation: Cancellation | None = None,
) -> SyncOutcome:
    """Plan `spec`, copy what differs (`image_parallel` at once), prune if asked; cancelling
    `cancellation` stops this sync only."""
    cancellation = cancellation or Cancellation()
    quota = QuotaBook()
    budget = RetryBudget(options.retry_budget) if options.retry_budget is not None else None
    with ExitStack() as stack:
        client = None
        run_id = uuid.uuid4().hex
        policy = None
        if options.cluster is not None:
            # Opened first, so the planner's requests count against the cluster's rate too.
            client = stack.enter_context(open_cluster(options.cluster))
            if settings.rate_limits:
                policy = shared_policy(settings.rate_limits, run_id, client)
        http = stack.enter_context(sync_client(settings, spec, quota, budget, policy, cancellation))
        with planning_context(settings, http, cancellation) as planning:
            plan = Planner(planning, options.prune).plan(spec)
        outcome = SyncOutcome(plan)
        if options.dry_run:
            return outcome
        gates: list[Gate] = [QuotaGate(quota, options.quota_floor)]
        if budget is not None:
            gates.append(BudgetGate(budget))
        run_options = RunOptions(options.keep_going, gates, on_result)
        if client is not None:
            on_cluster = DaskRunner(client, settings, quota, budget, run_id)
            try:
                outcome.results = run_copies(plan, on_cluster, run_options)
            finally:
                on_cluster.close()
        else:
            with (
                open_session(settings, http, cancellation) as session,
                cancellable_pool(cancellation, options.image_parallel, "sync") as pool,
            ):
                runner = ThreadRunner(session, options.image_parallel, pool)
                outcome.results = run_copies(plan, runner, run_options)
        if options.prune:
            with planning_context(settings, http, cancellation) as pruning:
                for result in prune(plan, pruning):
                    on_result(result)
                    outcome.results.append(result)
        outcome.retries = http.retries_made()
        if client is not None:  # the workers' own clients retried these
            outcome.retries += sum(result.retries for result in outcome.results)
    return outcome
