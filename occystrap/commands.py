"""What `process` and `info` do: open endpoints from URIs, run the pipeline, report."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import click

from occystrap.blobcache import BlobCache, open_blob_cache
from occystrap.compression import DeflatePool
from occystrap.digests import sha256_digest
from occystrap.endpoints import Endpoint, parse_uri
from occystrap.endpoints.dir import DirURI
from occystrap.endpoints.quay import QuayURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import OccystrapError, UsageError
from occystrap.filters.matching import PathMatcher, compile_matcher
from occystrap.filters.search import print_hits
from occystrap.image import Image, ImageIndex
from occystrap.manifest import Descriptor, Manifest, Platform, image_info
from occystrap.middleware.builder import ChainClient, build_client
from occystrap.pipeline import (
    CopyResult,
    ImageFilter,
    ProgressSink,
    RunContext,
    TransferStats,
    choose_platform,
    run_pipeline,
)
from occystrap.progress import TerminalProgress, human_bytes
from occystrap.quay.api import QuayClient, QuayImage, api_base, find_images
from occystrap.quay.bulk import run_each
from occystrap.registry.reference import ImageReference, validate_repository
from occystrap.settings import RunSettings
from occystrap.stores import check_referrer_ends, copy_image_referrers
from occystrap.toolbox import PickedImage, inspect_keys

LOG = logging.getLogger("occystrap")


def _hosts(*endpoints: Endpoint) -> list[str]:
    return [host for endpoint in endpoints for host in endpoint.registry_hosts()]


def open_client(settings: RunSettings, *endpoints: Endpoint) -> ChainClient:
    """The run's one client, with credentials for the registries the endpoints name."""
    return build_client(settings.chain_settings(_hosts(*endpoints)))


def _location(endpoint: Endpoint | None) -> str | None:
    """Where one end of a copy is, to give it its own credentials: "HOST/REPOSITORY" for a
    registry image, the host for other registry endpoints, None for files."""
    if isinstance(endpoint, RegistryURI):
        return f"{endpoint.reference.registry}/{endpoint.reference.repository}"
    hosts = endpoint.registry_hosts() if endpoint is not None else ()
    return hosts[0] if hosts else None


def open_copy_client(
    settings: RunSettings,
    source: Endpoint,
    destination: Endpoint,
    on_rate_wait: Callable[[str, float], None] | None = None,
) -> ChainClient:
    """The client of a copy: --src-creds for the source, --dest-creds for the destination;
    `on_rate_wait` hears of requests the rate limiter holds (for the progress display)."""
    chain = settings.copy_chain_settings(_location(source), _location(destination))
    return build_client(replace(chain, on_rate_wait=on_rate_wait))


@contextmanager
def _workdir(settings: RunSettings) -> Iterator[Path]:
    if settings.temp_dir is not None:
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="occystrap-", dir=settings.temp_dir) as path:
        yield Path(path)


@contextmanager
def _shared_helpers(settings: RunSettings) -> Iterator[tuple[BlobCache, DeflatePool]]:
    """The blob cache and the gzip threads every image of a run shares."""
    with open_blob_cache(settings.use_cache) as cache, DeflatePool(settings.parallel) as pool:
        yield cache, pool


def _copy_one(
    source: Endpoint,
    destination: Endpoint,
    ctx: RunContext,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
    referrers: bool = False,
) -> CopyResult:
    """One image (or index) through the pipeline, then (with `referrers`) what refers to it;
    the destination is opened (and checked) before anything is read."""
    if referrers:
        check_referrer_ends(source, destination, ctx)
    output = destination.open_output(ctx)
    result = run_pipeline(source.open_input(ctx), output, ctx, filters, platforms)
    if referrers:
        result = replace(result, referrers=copy_image_referrers(source, destination, ctx))
    return result


def copy(
    source: str,
    destination: str,
    settings: RunSettings | None = None,
    *,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
    progress: ProgressSink | None = None,
    referrers: bool = False,
) -> CopyResult:
    """Copy the image at `source` to `destination` (URIs as the CLI takes them); with
    `referrers`, also what refers to it (signatures, SBOMs), recursively."""
    settings = settings or RunSettings()
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    with (
        open_copy_client(settings, source_uri, destination_uri) as http,
        _workdir(settings) as work,
        _shared_helpers(settings) as (cache, pool),
    ):
        ctx = RunContext(settings, http, work, cache=cache, deflate_pool=pool)
        if progress is not None:
            ctx.progress = progress
        return _copy_one(source_uri, destination_uri, ctx, filters, platforms, referrers)


def process(
    settings: RunSettings,
    source: str,
    destination: str,
    filters: Sequence[ImageFilter] = (),
    platforms: Sequence[Platform] = (),
    image_parallel: int = 3,
    referrers: bool = False,
) -> None:
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if isinstance(source_uri, QuayURI):
        _process_quay(settings, source_uri, destination_uri, image_parallel, filters, referrers)
        return
    progress = TerminalProgress(f"{source_uri} -> {destination_uri}")
    with (
        open_copy_client(settings, source_uri, destination_uri, progress.rate_limited) as http,
        _workdir(settings) as work,
        _shared_helpers(settings) as (cache, pool),
    ):
        with progress:
            ctx = RunContext(settings, http, work, progress, cache=cache, deflate_pool=pool)
            result = _copy_one(source_uri, destination_uri, ctx, filters, platforms, referrers)
        what = f"{source_uri} -> {destination_uri}: {result.layers} layers"
        if referrers:
            what += f", {result.referrers} {'referrer' if result.referrers == 1 else 'referrers'}"
        if result.digest:
            what += f", {result.digest}"
        _summary(what, progress, http, result.stats)


def _summary(
    what: str, progress: TerminalProgress, http: ChainClient, stats: TransferStats
) -> None:
    """The run's last line on stderr: what was written, what moved, how long, how many retries."""
    retries = http.retries_made()
    blobs = ""
    if stats.uploaded or stats.mounted or stats.skipped:
        blobs = (
            f", blobs {stats.uploaded} uploaded, {stats.mounted} mounted,"
            f" {stats.skipped} already there"
        )
    click.echo(
        f"occystrap: {what}{blobs}; {human_bytes(stats.bytes_downloaded)} downloaded,"
        f" {human_bytes(stats.bytes_uploaded)} uploaded in {progress.tally.elapsed():.1f} s,"
        f" {retries} {'retry' if retries == 1 else 'retries'}",
        err=True,
    )


# -- quay:// sources: many images ---------------------------------------------------------


@contextmanager
def _quay_images(
    settings: RunSettings,
    uri: QuayURI,
    *other: Endpoint,
    on_rate_wait: Callable[[str, float], None] | None = None,
) -> Iterator[tuple[ChainClient, list[QuayImage]]]:
    """The run's client, with the Quay API token for `uri`'s host, and the images it names."""
    base = api_base(uri.host, settings.insecure)
    destination = _location(other[0]) if other else None
    chain = replace(
        settings.copy_chain_settings(uri.host, destination, base), on_rate_wait=on_rate_wait
    )
    if uri.token:
        chain = replace(chain, quay_token=uri.token)
    with build_client(chain) as http:
        yield http, find_images(QuayClient(http, base), uri, settings.parallel)


def _check_bulk_destination(uri: Endpoint) -> None:
    """Refuse, before any network call, a destination that holds only one image."""
    if isinstance(uri, DirURI) and uri.unique_names:
        return
    if isinstance(uri, RegistryURI):
        location = uri.shown.partition("://")[2].partition("?")[0]
        names_tag = ":" in location.rpartition("/")[2]
        if not names_tag and uri.reference.digest is None:
            return
    raise UsageError(
        f"{uri} holds a single image but quay:// names many: use"
        " dir://PATH?unique_names=true or registry://HOST/PREFIX (no tag)"
    )


def _bulk_destination(uri: Endpoint, image: QuayImage) -> Endpoint:
    """Where `image` goes: the shared directory, or HOST/PREFIX/ORG/REPO:TAG."""
    if not isinstance(uri, RegistryURI):
        return uri
    prefix = uri.reference
    repository = f"{prefix.repository}/{image.org}/{image.repository}"
    validate_repository(repository, repository)
    return replace(uri, reference=ImageReference(prefix.registry, repository, image.tag))


def _process_quay(
    settings: RunSettings,
    uri: QuayURI,
    destination: Endpoint,
    image_parallel: int,
    filters: Sequence[ImageFilter] = (),
    referrers: bool = False,
) -> None:
    _check_bulk_destination(destination)
    stats = TransferStats()
    progress = TerminalProgress(f"{uri.describe()} -> {destination}")
    with (
        _quay_images(settings, uri, destination, on_rate_wait=progress.rate_limited) as (
            http,
            images,
        ),
        _shared_helpers(settings) as (cache, pool),
    ):
        if not images:
            click.echo(f"occystrap: no image matches {uri.describe()}", err=True)
            return

        def copy_one(image: QuayImage, progress: ProgressSink) -> None:
            with _workdir(settings) as workdir:
                ctx = RunContext(settings, http, workdir, progress, stats, cache, pool)
                _copy_one(
                    RegistryURI(image.reference),
                    _bulk_destination(destination, image),
                    ctx,
                    filters,
                    referrers=referrers,
                )

        with progress:
            outcome = run_each(images, copy_one, progress, image_parallel)
        for image, error in outcome.failed:
            click.echo(f"occystrap: {image} failed: {error}", err=True)
        _summary(
            f"{uri.describe()} -> {destination}: {len(outcome.succeeded)} images ok,"
            f" {len(outcome.failed)} failed",
            progress,
            http,
            stats,
        )
    if outcome.failed:
        raise OccystrapError(
            f"{len(outcome.failed)} of {len(images)} images failed; see the lines above"
        )


# -- search -------------------------------------------------------------------------------


def search(
    settings: RunSettings,
    source: str,
    pattern: str,
    regex: bool = False,
    script_friendly: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Print the paths of every layer of `source` that match `pattern`; return how many.

    Nothing is written: each layer is streamed through `open_tar` (verified) and dropped."""
    matcher = compile_matcher(pattern, regex)
    uri = parse_uri(source)
    if isinstance(uri, QuayURI):
        with _quay_images(settings, uri) as (http, found):
            endpoints: list[Endpoint] = [RegistryURI(image.reference) for image in found]
            return _search_each(settings, http, endpoints, matcher, script_friendly, out)
    with open_client(settings, uri) as http:
        return _search_each(settings, http, [uri], matcher, script_friendly, out)


def _search_each(
    settings: RunSettings,
    http: ChainClient,
    endpoints: Sequence[Endpoint],
    matcher: PathMatcher,
    script_friendly: bool,
    out: TextIO,
) -> int:
    count = layers = 0
    for endpoint in endpoints:
        with _workdir(settings) as work:
            ctx = RunContext(settings, http, work)
            item = endpoint.open_input(ctx).read()
            image = (
                choose_platform(item, settings.platform) if isinstance(item, ImageIndex) else item
            )
            count += print_hits(image, matcher, settings.parallel, script_friendly, out)
            layers += len(image.layers)
    images = f"{len(endpoints)} images" if len(endpoints) != 1 else str(endpoints[0])
    click.echo(
        f"occystrap: {count} {'path matches' if count == 1 else 'paths match'} in {images}"
        f" ({layers} {'layer' if layers == 1 else 'layers'} searched)",
        err=True,
    )
    return count


# -- info ---------------------------------------------------------------------------------


def _manifest_of(image: Image) -> Manifest:
    """The image's manifest: the source's, or the one a registry push would build."""
    layers = [Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers]
    config = Descriptor("", image.config_digest, len(image.config))
    return Manifest(image.manifest_media_type, config, layers, image.manifest or b"")


def describe(item: Image, name: str) -> dict:
    """What `info` reports for one image."""
    details: dict = {"image": name}
    try:
        config = item.config_json
    except (OccystrapError, ValueError):
        config = {}
    details.update(image_info(_manifest_of(item), config))
    if item.manifest is not None:
        details["manifest_digest"] = sha256_digest(item.manifest)
    return details


def _read_for_info(uri: Endpoint, ctx: RunContext) -> dict:
    item = uri.open_input(ctx).read()
    name = str(uri.reference) if isinstance(uri, RegistryURI) else str(uri)
    index_digest = None
    if isinstance(item, ImageIndex):
        index_digest = item.digest
        item = choose_platform(item, ctx.settings.platform)
    details = describe(item, name)
    if index_digest is not None:
        details["index_digest"] = index_digest
    if isinstance(uri, RegistryURI):
        picked = PickedImage(item, index_digest)
        details |= inspect_keys(uri.client(ctx), uri.reference, picked)
    return details


def info(settings: RunSettings, source: str) -> None:
    uri = parse_uri(source)
    if isinstance(uri, QuayURI):
        _info_quay(settings, uri)
        return
    with open_client(settings, uri) as http, _workdir(settings) as work:
        details = _read_for_info(uri, RunContext(settings, http, work))
    if settings.output_format == "json":
        click.echo(json.dumps(details, indent=2, sort_keys=True))
    else:
        _print_info(details)


def _info_quay(settings: RunSettings, uri: QuayURI) -> None:
    with (
        _quay_images(settings, uri) as (http, images),
        _workdir(settings) as work,
        ThreadPoolExecutor(settings.parallel, thread_name_prefix="info") as pool,
    ):
        ctx = RunContext(settings, http, work)
        every = list(
            pool.map(lambda image: _read_for_info(RegistryURI(image.reference), ctx), images)
        )
    if settings.output_format == "json":
        click.echo(json.dumps(every, indent=2, sort_keys=True))
        return
    if not every:
        click.echo(f"no image matches {uri.describe()}")
    for index, details in enumerate(every):
        if index:
            sys.stdout.write("\n")
        _print_info(details)


def _print_info(details: dict) -> None:
    out = sys.stdout
    platform = details.get("platform") or {}
    details = {**details, "platform": "/".join(v for v in platform.values() if v)}
    for key in (
        "image",
        "media_type",
        "platform",
        "manifest_digest",
        "index_digest",
        "config_digest",
        "created",
    ):
        if details.get(key):
            out.write(f"{key + ':':<17}{details[key]}\n")
    for key in ("entrypoint", "cmd"):
        if details.get(key) is not None:
            out.write(f"{key + ':':<17}{json.dumps(details[key])}\n")
    for name in details.get("env") or []:
        out.write(f"{'env:':<17}{name}\n")
    for name, value in sorted((details.get("labels") or {}).items()):
        out.write(f"{'label:':<17}{name}={value}\n")
    layers = details.get("layers", [])
    out.write(f"layers ({len(layers)}):\n")
    for layer in layers:
        out.write(
            f"  {layer['digest']}  {human_bytes(layer['size']):>9}  {layer['compression']:<5}"
            f"  diff_id {layer['diff_id']}\n"
        )
        if layer.get("created_by"):
            out.write(f"      {layer['created_by'][:160]}\n")
