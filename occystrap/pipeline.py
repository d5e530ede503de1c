"""The image pipeline: an input reads an image, filters derive new ones, an output writes it.

Inputs hand over images whose layers are not fetched yet (see `occystrap.image`); each
output pulls the bytes it needs as it goes. Outputs that need each layer's tar on disk, in
order (tar://, dir://), use `local_layers`, which fetches a bounded number of layers ahead
while the output writes the current one and removes each layer's files once written.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from occystrap import compression
from occystrap.atomic import discard_tree
from occystrap.blobcache import BlobCache, NullBlobCache
from occystrap.cancel import Cancellation, shutdown_pool, worker_pool
from occystrap.compression import DeflatePool
from occystrap.errors import DigestMismatchError, UsageError, writing_to
from occystrap.graph import ManifestInput, ManifestOutput, copy_graph
from occystrap.image import Image, ImageIndex, ImageLike, Layer
from occystrap.manifest import select_platform
from occystrap.platforms import Platform
from occystrap.registry.ledger import UploadLedger

if TYPE_CHECKING:  # httpx loads with the chain, when a run talks to the network
    import httpx

    from occystrap.extract import ExpansionBudget
    from occystrap.settings import RunSettings

LOG = logging.getLogger("occystrap")
T = TypeVar("T")


class ProgressSink(Protocol):
    """Where inputs and outputs report bytes moved; the CLI draws it."""

    def start(self, key: str, total: int | None, label: str) -> None: ...
    def advance(self, key: str, nbytes: int) -> None: ...
    def restart(self, key: str, completed: int) -> None: ...
    def finish(self, key: str) -> None: ...


class NullProgress:
    """Progress that goes nowhere: for library use and tests."""

    def start(self, key: str, total: int | None, label: str) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def restart(self, key: str, completed: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


@dataclass
class TransferStats:
    """What a run did with blobs, for the summary line and library callers (thread-safe)."""

    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0  # already at the destination
    bytes_downloaded: int = 0
    # What the destination stored this run, whatever it is (the summary's "uploaded" or
    # "written"): blobs as stored (compressed into a registry or layout; the layer tars and
    # config of a docker-save tarball, a daemon's load, dir://), plus files expanded.
    bytes_uploaded: int = 0
    retries: int = 0  # requests the chain retried
    recompressed: int = 0  # layers stored in another format than they came (--dest-compress)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def __getstate__(self) -> dict[str, object]:
        """The counts alone: a result crosses to another process (a cluster's worker)."""
        return {key: value for key, value in vars(self).items() if key != "_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        vars(self).update(state, _lock=threading.Lock())


class OnDemandClient:
    """The run's one client, built by `build` when an endpoint first asks for it: a run
    between files builds none (and reads no credentials). Thread-safe; closed by the run."""

    def __init__(self, build: Callable[[], httpx.Client]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self.built: httpx.Client | None = None

    def get(self) -> httpx.Client:
        with self._lock:
            if self.built is None:
                self.built = self._build()
            return self.built

    def close(self) -> None:
        with self._lock:
            if self.built is not None:
                self.built.close()


@dataclass
class RunContext:
    """What every endpoint and filter of a run shares: settings, the one client (or how to
    build it when first needed), scratch space."""

    settings: RunSettings
    client: httpx.Client | OnDemandClient
    workdir: Path
    progress: ProgressSink = field(default_factory=NullProgress)
    stats: TransferStats = field(default_factory=TransferStats)
    cache: BlobCache = field(default_factory=NullBlobCache)  # what earlier runs learnt
    deflate_pool: DeflatePool | None = None  # gzip threads shared by the run's layers
    uploads: UploadLedger = field(default_factory=UploadLedger)  # one upload per blob
    # This run's stop signal: its chain, registry clients, prefetch threads and pools heed it.
    cancellation: Cancellation = field(default_factory=Cancellation)

    @property
    def http(self) -> httpx.Client:
        """The run's one client, built now if this is the first call that needs it."""
        if isinstance(self.client, OnDemandClient):
            return self.client.get()
        return self.client


class ImageInput(Protocol):
    def read(self) -> ImageLike:
        """The image (or index) with its metadata; layer bytes are read later, on demand."""
        ...


class ImageOutput(Protocol):
    def write(self, item: Image) -> str | None:
        """Write the image; return the digest it is known by there (None if it has none).

        On failure leave nothing half-written."""
        ...


@runtime_checkable
class AbandonableOutput(Protocol):
    """An output that can take back, after a run failed part way, what that run created."""

    def abandon(self) -> None: ...


@runtime_checkable
class FinishingOutput(Protocol):
    """An output with work left once everything is in (an archive packed from its staging)."""

    def finish(self) -> None: ...


class ImageFilter(Protocol):
    def apply(self, image: Image, ctx: RunContext) -> Image:
        """The image unchanged, or a new image derived with `Image.with_layers`."""
        ...


@dataclass(frozen=True)
class CopyResult:
    """What `copy` did: the digest written (manifest or index), the blob counts, and how many
    referrers went with it."""

    digest: str | None
    layers: int  # of the image; of an index, its entries (see `platforms`)
    stats: TransferStats
    referrers: int = 0  # signatures, SBOMs ... copied with it (process --referrers)
    # An index written: each runnable platform ("linux/arm64/v8") and its manifest digest.
    platforms: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return bool(self.platforms)


def choose_platform(
    index: ImageIndex,
    default: Platform,
    platforms: Sequence[Platform] = (),
    doing: str = "writing",
) -> Image:
    """The one image a single-image destination (or a filter) takes from an index: the one
    --platform asked for, else the source URI's, else `default`; said aloud, with what is
    `doing` with it (writing, searching, showing), when it was a choice among several."""
    if len(platforms) > 1:
        raise UsageError(
            f"{len(platforms)} platforms asked for where one image is needed (a filter, or a"
            " destination holding one image); give one --platform"
        )
    platform = platforms[0] if platforms else index.pinned or default
    chosen = select_platform(index, platform.os, platform.architecture, platform.variant)
    runnable = [entry for entry in index.manifests if not entry.is_attestation]
    if len(runnable) > 1 and index.pinned is None:
        LOG.warning(
            "%s has %d platforms; %s %s (choose with --platform)",
            index.source,
            len(runnable),
            doing,
            chosen.platform,
        )
    return index.read_entry(chosen)


def run_pipeline(
    image_input: ImageInput,
    output: ImageOutput,
    ctx: RunContext,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
) -> CopyResult:
    """Read, filter and write one image or index.

    Between two places that store manifests, with no filter, the descriptor graph is copied
    byte for byte whatever it holds (`occystrap.graph`); otherwise the image is read as an
    image (refusing what is not one) for an output that needs a filesystem or a filter."""
    if ctx.settings.recompress and not getattr(output, "recompresses", False):
        raise UsageError(
            "--dest-compress recompresses layers a registry:// destination stores; this"
            " destination stores layers as they come (or uncompressed): drop it"
        )
    if (
        not filters
        and not ctx.settings.recompress
        and isinstance(output, ManifestOutput)
        and isinstance(image_input, ManifestInput)
    ):
        source = image_input.manifest_source()
        if source is not None:
            copied = copy_graph(source, output.manifest_sink(), platforms)
            return CopyResult(
                copied.digest, copied.entries, ctx.stats, platforms=dict(copied.platforms)
            )
    item = image_input.read()
    if isinstance(item, ImageIndex):
        item = choose_platform(item, ctx.settings.platform, platforms)
    for image_filter in filters:
        item = image_filter.apply(item, ctx)
    digest = output.write(item)
    return CopyResult(digest, len(item.layers), ctx.stats)


# -- fetching layers ahead of an output that writes tars in order ---------------------------


def _inflate_to_disk(
    layer: Layer, directory: Path, progress: ProgressSink, budget: ExpansionBudget | None
) -> Layer:
    """The layer with its verified tar kept under `directory` (one pass: fetch, inflate, hash).

    `budget` (expanding outputs) stops a decompression bomb before it fills the disk."""
    local = getattr(layer.blob, "local", False)
    if layer.tar_path is not None or (
        local and layer.compression == compression.NONE and layer.digest == layer.diff_id
    ):
        return dataclasses.replace(layer, uncompressed_size=layer.uncompressed_size or layer.size)
    key = f"fetch:{layer.digest}"
    progress.start(key, layer.size, layer.label)
    tar_path = directory / f"{layer.digest.replace(':', '-')}.tar"

    def inflate() -> int:
        progress.restart(key, 0)
        size = 0
        with (
            writing_to(directory),
            layer.open_tar(lambda n: progress.advance(key, n)) as tar,
            open(tar_path, "wb") as out,
        ):
            while chunk := tar.read(compression.CHUNK_SIZE):
                if budget is not None:
                    budget.charge(len(chunk))
                out.write(chunk)
                size += len(chunk)
        return size

    size = again_if_corrupt(layer, inflate)
    progress.finish(key)
    return dataclasses.replace(layer, tar_path=tar_path, uncompressed_size=size)


def again_if_corrupt(layer: Layer, action: Callable[[], T]) -> T:
    """Run `action`, which reads `layer`; a remote blob that failed its digest (corrupted in
    transit, or by a mirror, which is then skipped) gets one more try before the run fails."""
    try:
        return action()
    except DigestMismatchError as error:
        if getattr(layer.blob, "local", False):
            raise
        LOG.info("%s; fetching it again", error)
        return action()


def local_layers(
    image: Image, ctx: RunContext, budget: ExpansionBudget | None = None
) -> Iterator[Layer]:
    """The image's layers in order, each with its tar on local disk and verified.

    Up to `-j` distinct layers are fetched ahead of the one being consumed; a layer's
    files are removed once the consumer has moved past its last use, so temporary disk
    holds about `-j` layers, not the whole image.
    """
    distinct: dict[str, Layer] = {}
    last_use: dict[str, int] = {}
    for position, layer in enumerate(image.layers):
        distinct.setdefault(layer.digest, layer)
        last_use[layer.digest] = position
    order = list(distinct)
    directory = ctx.workdir / f"layers-{id(image):x}"
    directory.mkdir(parents=True, exist_ok=True)
    futures: dict[str, Future[Layer]] = {}
    ahead = max(1, ctx.settings.parallel)
    pool = worker_pool(ahead, "fetch")
    try:

        def schedule(upto: int) -> None:
            for digest in order[:upto]:
                if digest not in futures:
                    futures[digest] = pool.submit(
                        _inflate_to_disk, distinct[digest], directory, ctx.progress, budget
                    )

        for position, layer in enumerate(image.layers):
            index = order.index(layer.digest)
            schedule(index + 1 + ahead)
            ready = futures[layer.digest].result()
            yield dataclasses.replace(ready, created_by=layer.created_by)
            if last_use[layer.digest] == position and ready.tar_path is not None:
                ready.tar_path.unlink(missing_ok=True)
    finally:
        shutdown_pool(pool, ctx.cancellation)
        discard_tree(directory)
