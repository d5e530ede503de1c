"""What every command does, as a library: copy, copy_many, search and inspect.

Each takes URIs as the CLI takes them and a `RunSettings`, and returns a typed result; none
prints, prompts or keeps state between calls, so the CLI, a library caller and a worker
process of a cluster run the very same code (the arguments are plain picklable values). The
CLI (`occystrap.cli`) only renders what these return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occystrap.atomic import work_directory
from occystrap.blobcache import BlobCache, open_blob_cache
from occystrap.bulk import ImageProgress, run_each
from occystrap.cancel import Cancellation
from occystrap.compression import DeflatePool
from occystrap.digests import sha256_digest
from occystrap.endpoints import Endpoint, parse_uri
from occystrap.errors import OccystrapError, UsageError
from occystrap.image import Image, ImageIndex, Layer
from occystrap.manifest import Descriptor, Manifest, image_info
from occystrap.pipeline import (
    AbandonableOutput,
    CopyResult,
    FinishingOutput,
    ImageFilter,
    OnDemandClient,
    ProgressSink,
    RunContext,
    TransferStats,
    choose_platform,
    run_pipeline,
)
from occystrap.platforms import Platform
from occystrap.settings import RunSettings

# The search filter (and its tar reading and glob matching) loads when `search` runs, not
# for a copy.
if TYPE_CHECKING:
    from occystrap.filters.search import Hit

LOG = logging.getLogger("occystrap")

RateWait = Callable[[str, float], None]


# -- the run's shared parts ---------------------------------------------------------------


def _client_for(
    settings: RunSettings,
    source: Endpoint,
    destination: Endpoint | None = None,
    on_rate_wait: RateWait | None = None,
    cancellation: Cancellation | None = None,
) -> OnDemandClient:
    """The run's one client, built when an endpoint first needs it: the source's credentials
    (--src-creds) for the source, the destination's for the destination."""

    def build() -> Any:
        from occystrap.middleware.builder import build_client

        chain = settings.copy_chain_settings(
            source.credential_scope(),
            destination.credential_scope() if destination is not None else None,
        )
        chain = source.chain_settings(chain, settings)
        return build_client(
            replace(chain, on_rate_wait=on_rate_wait, cancellation=cancellation or Cancellation())
        )

    return OnDemandClient(build)


@contextmanager
def _client(
    settings: RunSettings,
    source: Endpoint,
    destination: Endpoint | None = None,
    on_rate_wait: RateWait | None = None,
    cancellation: Cancellation | None = None,
) -> Iterator[OnDemandClient]:
    client = _client_for(settings, source, destination, on_rate_wait, cancellation)
    try:
        yield client
    finally:
        client.close()


def _retries(client: OnDemandClient) -> int:
    return int(getattr(client.built, "retries_made", lambda: 0)())


def _workdir(settings: RunSettings) -> AbstractContextManager[Path]:
    return work_directory(settings.temp_dir, "occystrap-")


@contextmanager
def _shared_helpers(settings: RunSettings) -> Iterator[tuple[BlobCache, DeflatePool]]:
    """The blob cache and the gzip threads every image of a run shares."""
    with open_blob_cache(settings.use_cache) as cache, DeflatePool(settings.parallel) as pool:
        yield cache, pool


def copy_in_context(
    source: Endpoint,
    destination: Endpoint,
    ctx: RunContext,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
    referrers: bool = False,
) -> CopyResult:
    """One image (or index) through the pipeline, then (with `referrers`) what refers to it,
    in a run whose context the caller holds (a sync session, a bulk run); the destination is
    opened (and checked) before anything is read."""
    if referrers:  # stores (and with them the chain, httpx) only for --referrers
        from occystrap.stores import check_referrer_ends

        check_referrer_ends(source, destination, ctx)
    output = destination.open_output(ctx)
    try:
        result = run_pipeline(source.open_input(ctx), output, ctx, filters, platforms)
        if referrers:  # before an output is finished: an OCI archive packs them too
            from occystrap.stores import copy_image_referrers

            copied = copy_image_referrers(source, destination, ctx, output)
            result = replace(result, referrers=copied)
        if isinstance(output, FinishingOutput):
            output.finish()
    except BaseException:
        if isinstance(output, AbandonableOutput):
            output.abandon()
        raise
    return result


# -- copy -----------------------------------------------------------------------------------


def copy(
    source: str,
    destination: str,
    settings: RunSettings | None = None,
    *,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
    referrers: bool = False,
    progress: ProgressSink | None = None,
    on_rate_wait: RateWait | None = None,
    cancellation: Cancellation | None = None,
) -> CopyResult:
    """Copy the image (or index) at `source` to `destination` (URIs as the CLI takes them);
    with `referrers`, also what refers to it (signatures, SBOMs), recursively.

    `progress` hears of bytes moved, `on_rate_wait` of requests the rate limiter holds;
    cancelling `cancellation` stops this run (and no other) promptly.
    A source naming many images (quay://) is refused: that is `copy_many`."""
    settings, cancellation = settings or RunSettings(), cancellation or Cancellation()
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if source_uri.holds_many_images:
        raise UsageError(f"{source_uri.describe()} names many images: copy them with copy_many")
    with (
        _client(settings, source_uri, destination_uri, on_rate_wait, cancellation) as client,
        _workdir(settings) as work,
        _shared_helpers(settings) as (cache, pool),
    ):
        ctx = RunContext(
            settings, client, work, cache=cache, deflate_pool=pool, cancellation=cancellation
        )
        if progress is not None:
            ctx.progress = progress
        result = copy_in_context(source_uri, destination_uri, ctx, filters, platforms, referrers)
        result.stats.retries = _retries(client)
        return result


# -- copy_many: every image a source names ----------------------------------------------------


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a `copy_many`: where it came from and went, and why it failed if it did."""

    source: str
    destination: str
    error: str | None = None


@dataclass(frozen=True)
class BulkResult:
    """What `copy_many` did: every image's outcome, in the source's order, and the blob counts."""

    source: str
    destination: str
    images: tuple[ImageOutcome, ...]
    stats: TransferStats

    @property
    def succeeded(self) -> list[ImageOutcome]:
        return [image for image in self.images if image.error is None]

    @property
    def failed(self) -> list[ImageOutcome]:
        return [image for image in self.images if image.error is not None]


def check_many_destination(destination: Endpoint) -> None:
    """Refuse, before any network call, a destination that holds only one image."""
    if not destination.accepts_many_images():
        raise UsageError(
            f"{destination} holds a single image but quay:// names many: use"
            " dir://PATH?unique_names=true or registry://HOST/PREFIX (no tag)"
        )


def copy_many(
    source: str,
    destination: str,
    settings: RunSettings | None = None,
    *,
    filters: Sequence[ImageFilter] = (),
    image_parallel: int = 3,
    referrers: bool = False,
    progress: ProgressSink | None = None,
    on_rate_wait: RateWait | None = None,
    cancellation: Cancellation | None = None,
) -> BulkResult:
    """Copy every image `source` names (quay://ORG/GLOB:TAG, or a single image) to
    `destination`, `image_parallel` at once; one image failing does not stop the others
    (see `BulkResult.failed`)."""
    settings, cancellation = settings or RunSettings(), cancellation or Cancellation()
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if source_uri.holds_many_images:
        check_many_destination(destination_uri)
    with (
        _client(settings, source_uri, destination_uri, on_rate_wait, cancellation) as client,
        _shared_helpers(settings) as (cache, pool),
    ):
        stats = TransferStats()
        with _workdir(settings) as work:
            images = source_uri.images(
                RunContext(settings, client, work, cancellation=cancellation)
            )

        def copy_one(image: Endpoint) -> None:
            with _workdir(settings) as work:
                ctx = RunContext(
                    settings, client, work, stats=stats, cache=cache, cancellation=cancellation
                )
                ctx.deflate_pool = pool
                if progress is not None:
                    ctx.progress = ImageProgress(progress, image)
                target = destination_uri.destination_for(image)
                copy_in_context(image, target, ctx, filters, referrers=referrers)

        errors = run_each(images, copy_one, image_parallel, cancellation)
        stats.retries = _retries(client)
    outcomes = [
        ImageOutcome(image.describe(), str(destination_uri.destination_for(image)), error)
        for image, error in zip(images, errors, strict=True)
    ]
    return BulkResult(source_uri.describe(), str(destination_uri), tuple(outcomes), stats)


# -- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerHits:
    """The paths of one layer that matched, with the image and position they belong to."""

    image: Image
    position: int
    layer: Layer
    hits: tuple[Hit, ...]

    def lines(self, script_friendly: bool = False) -> list[str]:
        """The lines the `search` command prints for this layer."""
        from occystrap.filters.search import format_hits

        return format_hits(self.image, self.position, self.layer, list(self.hits), script_friendly)


@dataclass(frozen=True)
class SearchResult:
    """What `search` found: every layer with hits, and how much was searched."""

    found: tuple[LayerHits, ...]
    images: tuple[str, ...]  # each image searched, as named
    layers: int  # layers searched

    @property
    def count(self) -> int:
        """How many paths matched."""
        return sum(len(layer.hits) for layer in self.found)


def search(
    source: str,
    pattern: str,
    settings: RunSettings | None = None,
    *,
    regex: bool = False,
    on_layer: Callable[[LayerHits], None] | None = None,
    cancellation: Cancellation | None = None,
) -> SearchResult:
    """The paths of every layer of every image `source` names that match `pattern` (a glob,
    or a regular expression with `regex`). `on_layer` hears of each layer's hits as soon as
    it is searched, in order. Nothing is written: each layer is streamed (verified) and dropped.
    """
    from occystrap.filters.matching import compile_matcher
    from occystrap.filters.search import image_hits

    settings, cancellation = settings or RunSettings(), cancellation or Cancellation()
    matcher = compile_matcher(pattern, regex)
    uri = parse_uri(source)
    found: list[LayerHits] = []
    names: list[str] = []
    layers = 0
    with _client(settings, uri, cancellation=cancellation) as client:
        with _workdir(settings) as work:
            images = uri.images(RunContext(settings, client, work, cancellation=cancellation))
        for endpoint in images:
            with _workdir(settings) as work:
                ctx = RunContext(settings, client, work, cancellation=cancellation)
                item = endpoint.open_input(ctx).read()
                image = (
                    choose_platform(item, settings.platform, settings.platforms, "searching")
                    if isinstance(item, ImageIndex)
                    else item
                )
                for position, layer, hits in image_hits(image, matcher, settings.parallel):
                    layer_hits = LayerHits(image, position, layer, tuple(hits))
                    if hits:
                        found.append(layer_hits)
                        if on_layer is not None:
                            on_layer(layer_hits)
                layers += len(image.layers)
            names.append(str(endpoint))
    return SearchResult(tuple(found), tuple(names), layers)


# -- inspect ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    digest: str
    size: int
    media_type: str
    compression: str
    diff_id: str | None
    created_by: str


@dataclass(frozen=True)
class ImageInfo:
    """What `inspect` reports for one image (`as_json()` is `info -O json`'s object)."""

    image: str  # the image as named
    media_type: str
    platform: dict[str, str | None]  # os, architecture, variant
    config_digest: str
    layers: tuple[LayerInfo, ...]
    env: list[str]
    entrypoint: Any
    cmd: Any
    labels: dict[str, str]
    created: str | None
    manifest_digest: str | None = None
    index_digest: str | None = None
    # Keys read from where the image lives (a registry: `skopeo inspect`'s).
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "image": self.image,
            "media_type": self.media_type,
            "platform": dict(self.platform),
            "config_digest": self.config_digest,
            "layers": [asdict(layer) for layer in self.layers],
            "env": self.env,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "labels": self.labels,
            "created": self.created,
        }
        for key in ("manifest_digest", "index_digest"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        return document | self.extra


def _manifest_of(image: Image) -> Manifest:
    """The image's manifest: the source's, or the one a registry push would build."""
    layers = [Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers]
    config = Descriptor("", image.config_digest, len(image.config))
    return Manifest(image.manifest_media_type, config, layers, image.manifest or b"")


def describe(item: Image, name: str, index_digest: str | None = None) -> ImageInfo:
    """What `inspect` reports for one image, from its manifest and config."""
    try:
        config = item.config_json
    except (OccystrapError, ValueError):
        config = {}
    details = image_info(_manifest_of(item), config)
    return ImageInfo(
        image=name,
        media_type=details["media_type"],
        platform=details["platform"],
        config_digest=details["config_digest"],
        layers=tuple(LayerInfo(**layer) for layer in details["layers"]),
        env=details["env"],
        entrypoint=details["entrypoint"],
        cmd=details["cmd"],
        labels=details["labels"],
        created=details["created"],
        manifest_digest=sha256_digest(item.manifest) if item.manifest is not None else None,
        index_digest=index_digest,
    )


def _inspect_one(endpoint: Endpoint, ctx: RunContext) -> ImageInfo:
    item = endpoint.open_input(ctx).read()
    name = endpoint.describe()
    index_digest = None
    if isinstance(item, ImageIndex):
        index_digest = item.digest
        item = choose_platform(item, ctx.settings.platform, ctx.settings.platforms, "showing")
    info = describe(item, name, index_digest)
    return replace(info, extra=endpoint.inspect_keys(ctx, item, index_digest))


def inspect(
    source: str, settings: RunSettings | None = None, cancellation: Cancellation | None = None
) -> list[ImageInfo]:
    """The metadata of every image `source` names (manifest and config; no layer is read)."""
    settings, cancellation = settings or RunSettings(), cancellation or Cancellation()
    uri = parse_uri(source)
    with (
        _client(settings, uri, cancellation=cancellation) as client,
        _workdir(settings) as work,
        ThreadPoolExecutor(settings.parallel, thread_name_prefix="info") as pool,
    ):
        ctx = RunContext(settings, client, work, cancellation=cancellation)
        return list(pool.map(lambda endpoint: _inspect_one(endpoint, ctx), uri.images(ctx)))
