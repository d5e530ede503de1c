"""Carrying out a sync plan: copy what differs, prune if asked, report every image.

`copy_image` is the one function that copies an image of a sync, wherever it runs: in this
process (`-J` images at once) or as a task on a Dask worker (occystrap.sync.cluster). The
loop here decides which image starts next: none after a failure unless --keep-going, none
from a registry whose pull quota is down to the floor, none once the retry budget is spent;
those are reported `deferred`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from occystrap.atomic import work_directory
from occystrap.blobcache import BlobCache, open_blob_cache
from occystrap.buckets import BucketURI
from occystrap.bulk import describe_failure
from occystrap.cancel import Cancellation
from occystrap.compression import DeflatePool
from occystrap.endpoints import parse_uri
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import OccystrapError, RegistryError
from occystrap.layoutprune import prune_layout
from occystrap.mediatypes import is_index
from occystrap.middleware.builder import ChainClient, build_client
from occystrap.middleware.quota import QuotaReading
from occystrap.ocilayout import LayoutStorage, parse_index, ref_name
from occystrap.pipeline import RunContext, TransferStats
from occystrap.platforms import Platform
from occystrap.registry.ledger import UploadLedger
from occystrap.registry.referrers import names_referrers, referrers_tags_of
from occystrap.settings import RunSettings
from occystrap.sync.plan import (
    COPY,
    FAILED,
    KEPT,
    PLAN_PARALLEL,
    PRUNE,
    UNCHANGED,
    PlannedImage,
    SyncPlan,
    listed_manifests,
    manifest_sharers,
)

if TYPE_CHECKING:
    from occystrap.registry.client import ManifestHead, RegistryClient

LOG = logging.getLogger("occystrap.sync")

COPIED, PRUNED, DEFERRED = "copied", "pruned", "deferred"
STATUSES = (COPIED, UNCHANGED, FAILED, PRUNED, KEPT, DEFERRED)


@dataclass(frozen=True)
class CopyTask:
    """One image to copy: URIs and options only, never a credential (it may travel to
    another machine)."""

    source: str  # pinned by digest: exactly what was planned is copied
    target: str
    expected: str | None  # the digest the target must end with
    platforms: tuple[Platform, ...] = ()
    referrers: bool = False
    shown: str = ""  # the source as the plan names it (at its tag), for the result


@dataclass
class ImageResult:
    """What happened to one image: a line of output and an entry of --report."""

    source: str
    target: str
    status: str
    digest: str | None = None
    bytes: int = 0
    error: str | None = None
    uploaded: int = 0  # blobs uploaded, mounted
    mounted: int = 0
    retries: int = 0
    quota: list[QuotaReading] = field(default_factory=list)  # what a worker saw

    def as_json(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "status": self.status,
            "digest": self.digest,
            "bytes": self.bytes,
            "error": self.error,
        }


@dataclass
class CopySession:
    """What every image copied in one process shares: the one client, the blob cache, the
    gzip threads, scratch space and the upload ledger."""

    settings: RunSettings
    http: ChainClient
    workdir: Path
    cache: BlobCache
    deflate_pool: DeflatePool
    uploads: UploadLedger = field(default_factory=UploadLedger)
    cancellation: Cancellation = field(default_factory=Cancellation)  # stops this session

    def context(self, stats: TransferStats) -> RunContext:
        return RunContext(
            self.settings,
            self.http,
            self.workdir,
            stats=stats,
            cache=self.cache,
            deflate_pool=self.deflate_pool,
            uploads=self.uploads,
            cancellation=self.cancellation,
        )


@contextmanager
def open_session(
    settings: RunSettings,
    http: ChainClient | None = None,
    cancellation: Cancellation | None = None,
) -> Iterator[CopySession]:
    """A session over `http` (the run's client), or over a client of its own built from
    `settings` (a Dask worker: credentials from its own files and environment); cancelling
    `cancellation` stops this session only."""
    cancellation = cancellation or Cancellation()
    with ExitStack() as stack:
        if http is None:
            chain = replace(settings.chain_settings(), cancellation=cancellation)
            http = stack.enter_context(build_client(chain))
        work = stack.enter_context(work_directory(settings.temp_dir, "occystrap-sync-"))
        cache = stack.enter_context(open_blob_cache(settings.use_cache))
        pool = stack.enter_context(DeflatePool(settings.parallel))
        yield CopySession(settings, http, Path(work), cache, pool, cancellation=cancellation)


def copy_image(task: CopyTask, session: CopySession) -> ImageResult:
    """Copy one image and check the target then holds the digest planned; any failure is
    this image's result, never raised."""
    from occystrap.library import copy_in_context

    stats = TransferStats()
    retries_before = session.http.retries_made()
    result = ImageResult(task.shown or task.source, task.target, FAILED)
    try:
        source, target = parse_uri(task.source), parse_uri(task.target)
        copied = copy_in_context(
            source, target, session.context(stats), (), task.platforms, task.referrers
        )
        _verify(task, target, copied.digest, session)
        result.status, result.digest = COPIED, copied.digest
    except Exception as exc:  # noqa: BLE001 - a failure belongs to this image only
        LOG.debug("%s failed", task.source, exc_info=True)
        result.error = describe_failure(exc)
    result.bytes, result.uploaded, result.mounted = (
        stats.bytes_uploaded,
        stats.uploaded,
        stats.mounted,
    )
    result.retries = session.http.retries_made() - retries_before
    return result


def _verify(task: CopyTask, target: Any, written: str | None, session: CopySession) -> None:
    """The target answers with the planned digest (a registry is asked again, by HEAD)."""
    if task.expected is not None and written != task.expected:
        raise OccystrapError(
            f"{task.target} was written as {written}, not the planned {task.expected};"
            " the source changed during the run: run the sync again"
        )
    if isinstance(target, RegistryURI):
        from occystrap.registry.client import RegistryClient

        insecure = session.settings.insecure if target.insecure is None else target.insecure
        client = RegistryClient(session.http, target.reference.registry, insecure=insecure)
        held = client.head_manifest(target.reference.repository, target.reference.reference)
        if held.digest != written:
            raise OccystrapError(
                f"{task.target} answers {held.digest} after the copy wrote {written};"
                " something else writes there: run the sync again"
            )


class ImageRunner(Protocol):
    """Where copies run: threads of this process, or tasks of a Dask cluster."""

    slots: int

    def submit(self, task: CopyTask) -> Any: ...
    def wait_any(self, running: Sequence[Any]) -> list[Any]: ...
    def result(self, running: Any) -> ImageResult: ...


class ThreadRunner:
    """The embedded default: `slots` images at once in this process, one session shared."""

    def __init__(self, session: CopySession, slots: int, pool: ThreadPoolExecutor) -> None:
        self.session, self.slots, self.pool = session, slots, pool

    def submit(self, task: CopyTask) -> Future[ImageResult]:
        return self.pool.submit(copy_image, task, self.session)

    def wait_any(self, running: Sequence[Future[ImageResult]]) -> list[Future[ImageResult]]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, running: Future[ImageResult]) -> ImageResult:
        return running.result()


class Gate(Protocol):
    """Why an image may not start now (None: it may); the quota book and retry budget."""

    def holds(self, image: PlannedImage) -> str | None: ...


@dataclass
class RunOptions:
    keep_going: bool = False
    gates: Sequence[Gate] = ()
    on_result: Callable[[ImageResult], None] = lambda result: None


def run_copies(plan: SyncPlan, runner: ImageRunner, options: RunOptions) -> list[ImageResult]:
    """Every planned copy through `runner`, `runner.slots` at once; results in plan order."""
    results: dict[int, ImageResult] = {}
    running: dict[Any, int] = {}
    stopped: str | None = None

    def finish(position: int, result: ImageResult) -> None:
        results[position] = result
        options.on_result(result)

    for position, image in enumerate(plan.images):
        if image.action == COPY:
            continue
        status = {UNCHANGED: UNCHANGED, FAILED: FAILED}.get(image.action)
        if status is not None:
            finish(position, _result_of(image, status))
    queue = [
        (position, image) for position, image in enumerate(plan.images) if image.action == COPY
    ]
    for position, image in queue:
        while len(running) >= runner.slots:
            stopped = _collect(runner, running, finish, options) or stopped
        reason = stopped or next(
            (why for gate in options.gates if (why := gate.holds(image)) is not None), None
        )
        if reason is not None:
            finish(position, _result_of(image, DEFERRED, reason))
            continue
        task = CopyTask(
            image.pinned or image.source,
            image.target,
            image.digest,
            image.platforms,
            image.referrers,
            image.source,
        )
        running[runner.submit(task)] = position
    while running:
        _collect(runner, running, finish, options)
    return [results[position] for position in sorted(results)]


def _collect(
    runner: ImageRunner,
    running: dict[Any, int],
    finish: Callable[[int, ImageResult], None],
    options: RunOptions,
) -> str | None:
    """Wait for at least one copy; say why nothing more may start, if a failure stops the run."""
    stop = None
    for done in runner.wait_any(list(running)):
        result = runner.result(done)
        finish(running.pop(done), result)
        if result.status == FAILED and not options.keep_going:
            stop = f"not started: {result.source} failed (--keep-going carries on past failures)"
    return stop


def _result_of(image: PlannedImage, status: str, error: str | None = None) -> ImageResult:
    return ImageResult(image.source, image.target, status, image.digest, 0, error or image.error)


def prune(plan: SyncPlan, ctx: RunContext) -> list[ImageResult]:
    """Delete the target tags the plan found stale, looking again first: registries delete
    by digest, so a manifest that a tag which stays holds now (the copies may have failed or
    moved it) is never deleted; that stale tag is reported `kept`. Layouts (directories,
    buckets) are judged by the same rule and lose the tags' entries, then the blobs that
    nothing left reaches."""
    from occystrap.registry.client import RegistryClient

    repositories: dict[tuple[str, str, bool], dict[str, PlannedImage]] = {}
    layouts: dict[str, tuple[OciLayoutURI | BucketURI, dict[str, PlannedImage]]] = {}
    for image in plan.images:
        uri = parse_uri(image.target)
        if image.action not in (PRUNE, KEPT):
            if isinstance(uri, OciLayoutURI | BucketURI):  # an interrupted prune to finish
                layouts.setdefault(image.target.partition("?")[0], (uri, {}))
            continue
        if isinstance(uri, RegistryURI):
            insecure = ctx.settings.insecure if uri.insecure is None else uri.insecure
            key = (uri.reference.registry, uri.reference.repository, insecure)
            repositories.setdefault(key, {})[uri.reference.reference] = image
            continue
        assert isinstance(uri, OciLayoutURI | BucketURI) and uri.tag is not None
        # LAYOUT?tag=TAG[&OPTIONS]: one layout per location, whatever its tags
        layouts.setdefault(image.target.partition("?")[0], (uri, {}))[1][uri.tag] = image
    results = []
    for (registry, repository, insecure), stale in repositories.items():
        client = RegistryClient(ctx.http, registry, insecure=insecure)
        results += _prune_repository(client, repository, stale)
    for where, (layout, stale) in layouts.items():
        results += _prune_layout(layout.layout(ctx), where, stale, ctx.cancellation)
    return results


def _prune_layout(
    storage: LayoutStorage,
    where: str,
    stale: dict[str, PlannedImage],
    cancellation: Cancellation,
) -> list[ImageResult]:
    """Prune `stale` (tag -> its planned image) in the layout `where`, judged on its
    `index.json` as it is when the entries are removed, after finishing an interrupted
    prune there. Referrers tags the plan listed go only with their subject."""
    now: dict[str, str] = {}  # stale tag -> what it holds now
    sharers: dict[str, str] = {}
    referring = {tag for tag in stale if names_referrers(tag)}

    def choose(tags: Mapping[str, str]) -> set[str]:
        now.clear()
        now.update({tag: tags[tag] for tag in stale if tag in tags})
        sharers.clear()
        sharers.update(manifest_sharers(now, {t: d for t, d in tags.items() if t not in stale}))
        return set(now) - set(sharers)

    journal = PlannedImage("", where, PRUNE)
    try:
        pruned = prune_layout(storage, choose, cancellation)
        listed = set() if not referring else _referrers_tags_left(storage, referring)
    except (OccystrapError, httpx.RequestError) as exc:
        why = describe_failure(exc)
        return [_result_of(image, FAILED, why) for image in list(stale.values()) or [journal]]
    results = []
    if pruned.finished is not None:
        done = f"finished an interrupted prune: {pruned.finished} blobs deleted"
        results.append(_result_of(journal, PRUNED, done))
    elif pruned.journal_found and not stale:  # the stale tags' lines say why otherwise
        if pruned.blob_failure is not None:
            why = describe_failure(pruned.blob_failure)
            results.append(_result_of(journal, FAILED, f"finishing an interrupted prune: {why}"))
        else:
            results.append(_result_of(journal, PRUNED, pruned.blobs_kept))
    for tag, image in stale.items():
        if tag in referring:
            if tag in listed:
                kept = "refers to a manifest that a tag which stays reaches"
                results.append(_result_of(image, KEPT, kept))
            else:
                results.append(_result_of(image, PRUNED))
            continue
        if tag not in now:  # gone meanwhile: nothing left to remove
            results.append(_result_of(image, PRUNED))
            continue
        image = replace(image, digest=now[tag])
        if tag in sharers:
            results.append(_result_of(image, KEPT, f"shares manifest with {sharers[tag]}"))
        elif pruned.blob_failure is not None:
            why = describe_failure(pruned.blob_failure)
            left = f"its entry is removed, but deleting the blobs only it reached failed: {why}"
            results.append(_result_of(image, FAILED, left))
        else:
            results.append(_result_of(image, PRUNED, pruned.blobs_kept))
    return results


def _referrers_tags_left(storage: LayoutStorage, referring: set[str]) -> set[str]:
    """Of `referring`, the referrers tags `index.json` still lists."""
    raw = storage.read_index()
    entries = [] if raw is None else parse_index(raw, storage.where)
    return referring & {ref_name(entry) for entry in entries}


def _prune_repository(
    client: RegistryClient, repository: str, stale: dict[str, PlannedImage]
) -> list[ImageResult]:
    """Prune `stale` (tag -> its planned image) in one repository, as it is now."""
    try:
        heads = _tag_heads(client, repository)
    except (OccystrapError, httpx.RequestError) as exc:
        unknown = f"cannot tell which tags stay and what they hold: {describe_failure(exc)}"
        return [_result_of(image, FAILED, unknown) for image in stale.values()]
    now = {tag: head.digest for tag, head in heads.items()}
    held = {tag: digest for tag, digest in now.items() if tag not in stale}
    stale_now = {tag: now[tag] for tag in stale if tag in now}
    kept = {
        tag: f"shares manifest with {holder}"
        for tag, holder in manifest_sharers(stale_now, held).items()
    }
    # A stale referrers tag whose manifest a tag that stays holds now, or lists in the
    # index it holds, keeps its referrers.
    referring = {tag for tag in stale_now if names_referrers(tag)}
    for holder, held_digest in sorted(held.items(), reverse=True):
        for tag in set(referrers_tags_of(held_digest)) & referring:
            kept[tag] = f"refers to the manifest of {holder}"
    unsettled = referring - set(kept)
    unreached: str | None = None  # why what the tags that stay reach cannot be told
    if unsettled:
        try:
            held_indexes = {
                tag: head.digest
                for tag, head in heads.items()
                if tag in held and is_index(head.media_type)
            }
            kept |= _referrers_of_platforms(client, repository, held_indexes, unsettled)
        except (OccystrapError, httpx.RequestError) as exc:
            unreached = f"cannot tell what the tags that stay reach: {describe_failure(exc)}"
    deleted: dict[str, str | None] = {}  # digest -> why deleting it failed (None: deleted)
    results = []
    for tag, image in stale.items():
        digest = stale_now.get(tag)
        if digest is None:  # gone meanwhile: nothing left to delete
            results.append(_result_of(image, PRUNED))
            continue
        image = replace(image, digest=digest)
        if tag in kept:
            results.append(_result_of(image, KEPT, kept[tag]))
            continue
        if unreached is not None and tag in unsettled:
            results.append(_result_of(image, FAILED, unreached))
            continue
        if digest not in deleted:
            try:
                client.delete_manifest(repository, digest)
                deleted[digest] = None
            except (OccystrapError, httpx.RequestError) as exc:
                deleted[digest] = describe_failure(exc)
        why = deleted[digest]
        results.append(_result_of(image, PRUNED if why is None else FAILED, why))
    return results


def _referrers_of_platforms(
    client: RegistryClient, repository: str, held_indexes: Mapping[str, str], referring: set[str]
) -> dict[str, str]:
    """Of `referring`, the referrers tags of a platform manifest listed by an index that a
    tag that stays holds (tag -> digest) -> why they are kept."""
    kept: dict[str, str] = {}
    listed: dict[str, list[str]] = {}  # index digest -> its manifests, each read once
    for holder, held_digest in sorted(held_indexes.items(), reverse=True):
        if held_digest not in listed:
            listed[held_digest] = listed_manifests(client, repository, held_digest)
        for platform in listed[held_digest]:
            for tag in set(referrers_tags_of(platform)) & referring:
                kept[tag] = f"refers to a platform manifest of {holder}"
    return kept


def _tag_heads(client: RegistryClient, repository: str) -> dict[str, ManifestHead]:
    """Every tag of `repository` and the manifest it holds now (a tag deleted meanwhile is
    left out)."""

    def head(tag: str) -> ManifestHead | None:
        try:
            return client.head_manifest(repository, tag)
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise

    with ThreadPoolExecutor(PLAN_PARALLEL, thread_name_prefix="prune") as pool:
        tags = client.list_tags(repository)
        heads = list(pool.map(head, tags))
    return {tag: head for tag, head in zip(tags, heads, strict=True) if head is not None}


def summarise(results: Sequence[ImageResult]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for result in results:
        counts[result.status] += 1
    return counts
