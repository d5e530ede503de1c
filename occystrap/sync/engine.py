"""`sync` as a library call: plan, then copy what differs, then prune; typed results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from occystrap.cancel import cancellable_pool
from occystrap.middleware.builder import ChainClient, build_client
from occystrap.settings import RunSettings
from occystrap.sync.config import SyncSpec
from occystrap.sync.plan import FAILED, Planner, SyncPlan, split_host
from occystrap.sync.run import (
    DEFERRED,
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


@contextmanager
def sync_client(settings: RunSettings, spec: SyncSpec) -> Iterator[ChainClient]:
    """The run's one client, with --src-creds for every source host and --dest-creds for
    every target host (and a skopeo file's credentials for its hosts)."""
    sources = [split_host(rule.source) for rule in spec.rules]
    targets = [split_host(rule.target) for rule in spec.rules]
    chain = settings.ends_chain_settings(sources, targets, extra=spec.credentials)
    with build_client(chain) as http:
        yield http


def plan_sync(settings: RunSettings, spec: SyncSpec, prune_stale: bool = False) -> SyncPlan:
    with sync_client(settings, spec) as http:
        return Planner(http, settings.insecure, prune_stale).plan(spec)


def sync(
    settings: RunSettings,
    spec: SyncSpec,
    options: SyncOptions,
    on_result: Callable[[ImageResult], None] = lambda result: None,
) -> SyncOutcome:
    """Plan `spec`, copy what differs (`image_parallel` at once), prune if asked."""
    with sync_client(settings, spec) as http:
        plan = Planner(http, settings.insecure, options.prune).plan(spec)
        outcome = SyncOutcome(plan)
        if options.dry_run:
            return outcome
        run_options = RunOptions(options.keep_going, on_result=on_result)
        with (
            open_session(settings, http) as session,
            cancellable_pool(options.image_parallel, "sync") as pool,
        ):
            runner = ThreadRunner(session, options.image_parallel, pool)
            outcome.results = run_copies(plan, runner, run_options)
        if options.prune:
            for result in prune(plan, http, settings):
                on_result(result)
                outcome.results.append(result)
        outcome.retries = http.retries_made()
    return outcome
