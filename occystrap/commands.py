"""What `process` and `info` do: pick input and output from URIs, run the pipeline, report."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click
import httpx

from occystrap.errors import OccystrapError, UsageError
from occystrap.inputs.registry import RegistryInput
from occystrap.inputs.tarball import TarballInput
from occystrap.middleware.builder import ChainClient, build_client
from occystrap.outputs.directory import DirectoryOutput
from occystrap.outputs.registry import RegistryOutput
from occystrap.outputs.tarball import TarballOutput
from occystrap.pipeline import Image, ImageInput, ImageOutput, ProgressSink
from occystrap.progress import TerminalProgress, human_bytes
from occystrap.quay.api import QuayClient, QuayImage, api_base, find_images
from occystrap.quay.bulk import run_each
from occystrap.registry.client import RegistryClient
from occystrap.registry.manifest import image_info
from occystrap.registry.reference import ImageReference, validate_repository
from occystrap.settings import RunSettings
from occystrap.uris import DirURI, ParsedURI, QuayURI, RegistryURI, TarURI, parse_uri

LOG = logging.getLogger("occystrap")


def _registry_hosts(*uris: object) -> list[str]:
    return [uri.reference.registry for uri in uris if isinstance(uri, RegistryURI)]


def _registry_client(http: httpx.Client, uri: RegistryURI, settings: RunSettings) -> RegistryClient:
    insecure = settings.insecure if uri.insecure is None else uri.insecure
    return RegistryClient(http, uri.reference.registry, insecure=insecure)


def _open_input(
    uri: object, settings: RunSettings, http: httpx.Client, keep_tars: bool = False
) -> ImageInput:
    """`keep_tars`: the output wants uncompressed layers, so keep the ones inflated while
    verifying instead of inflating twice."""
    if isinstance(uri, RegistryURI):
        platform = settings.with_platform(uri.os, uri.arch, uri.variant).platform
        return RegistryInput(
            _registry_client(http, uri, settings),
            uri.reference,
            platform,
            settings.parallel,
            keep_tars=keep_tars,
        )
    if isinstance(uri, TarURI):
        return TarballInput(uri.path)
    raise UsageError(f"{uri} cannot be a source: use registry:// or tar://")


def _open_output(
    uri: object, source: object, settings: RunSettings, http: httpx.Client, workdir: Path
) -> ImageOutput:
    if isinstance(uri, TarURI):
        return TarballOutput(uri.path)
    if isinstance(uri, DirURI):
        return DirectoryOutput(uri.path, unique_names=uri.unique_names, expand=uri.expand)
    if isinstance(uri, RegistryURI):
        same_registry = (
            isinstance(source, RegistryURI) and source.reference.registry == uri.reference.registry
        )
        return RegistryOutput(
            _registry_client(http, uri, settings),
            uri.reference,
            workdir,
            compression_kind=settings.compression,
            parallel=settings.parallel,
            mount_from=[source.reference.repository] if same_registry else [],
        )
    raise UsageError(f"{uri} cannot be a destination: use registry://, tar:// or dir://")


@contextmanager
def _workdir(settings: RunSettings) -> Iterator[Path]:
    if settings.temp_dir is not None:
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="occystrap-", dir=settings.temp_dir) as path:
        yield Path(path)


def _copy(
    source: ParsedURI,
    destination: ParsedURI,
    settings: RunSettings,
    http: httpx.Client,
    workdir: Path,
    progress: ProgressSink,
) -> Image:
    """One image through the pipeline: fetch it into `workdir`, write it out."""
    image_input = _open_input(
        source, settings, http, keep_tars=isinstance(destination, (TarURI, DirURI))
    )
    output = _open_output(destination, source, settings, http, workdir)
    image = image_input.fetch(workdir, progress)
    output.write(image, progress)
    return image


def process(
    settings: RunSettings,
    source: str,
    destination: str,
    filters: list[str],
    image_parallel: int = 3,
) -> None:
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if filters:
        raise UsageError("filters (-f) are not available yet; run without them")
    if isinstance(source_uri, QuayURI):
        _process_quay(settings, source_uri, destination_uri, destination, image_parallel)
        return
    chain = settings.chain_settings(_registry_hosts(source_uri, destination_uri))
    with build_client(chain) as http, _workdir(settings) as workdir:
        with TerminalProgress() as progress:
            image = _copy(source_uri, destination_uri, settings, http, workdir, progress)
        _summary(f"{source} -> {destination}: {len(image.layers)} layers", progress, http)


def _summary(what: str, progress: TerminalProgress, http: ChainClient) -> None:
    """The run's last line on stderr: what moved, how many bytes, how long, how many retries."""
    tally, retries = progress.tally, http.retries_made()
    click.echo(
        f"occystrap: {what}, {human_bytes(tally.bytes)} moved in {tally.elapsed():.1f} s,"
        f" {retries} {'retry' if retries == 1 else 'retries'}",
        err=True,
    )


# -- quay:// sources: many images ---------------------------------------------------------


@contextmanager
def _quay_images(
    settings: RunSettings, uri: QuayURI, *other_uris: ParsedURI
) -> Iterator[tuple[httpx.Client, list[QuayImage]]]:
    """The run's client, with the Quay API token for `uri`'s host, and the images it names."""
    base = api_base(uri.host, settings.insecure)
    chain = settings.chain_settings([uri.host, *_registry_hosts(*other_uris)], base)
    if uri.token:
        chain = replace(chain, quay_token=uri.token)
    with build_client(chain) as http:
        yield http, find_images(QuayClient(http, base), uri, settings.parallel)


def _check_bulk_destination(uri: ParsedURI, text: str) -> None:
    """Refuse, before any network call, a destination that holds only one image."""
    if isinstance(uri, DirURI) and uri.unique_names:
        return
    location = text.partition("://")[2].partition("?")[0]
    names_tag = ":" in location.rpartition("/")[2]
    if isinstance(uri, RegistryURI) and not names_tag and uri.reference.digest is None:
        return
    raise UsageError(
        f"{text} holds a single image but quay:// names many: use"
        " dir://PATH?unique_names=true or registry://HOST/PREFIX (no tag)"
    )


def _bulk_destination(uri: ParsedURI, image: QuayImage) -> ParsedURI:
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
    destination_uri: ParsedURI,
    destination: str,
    image_parallel: int,
) -> None:
    _check_bulk_destination(destination_uri, destination)
    with _quay_images(settings, uri, destination_uri) as (http, images):
        if not images:
            click.echo(f"occystrap: no image matches {_describe(uri)}", err=True)
            return

        def copy_one(image: QuayImage, progress: ProgressSink) -> None:
            with _workdir(settings) as workdir:
                source = RegistryURI(image.reference)
                target = _bulk_destination(destination_uri, image)
                _copy(source, target, settings, http, workdir, progress)

        with TerminalProgress() as progress:
            outcome = run_each(images, copy_one, progress, image_parallel)
        for image, error in outcome.failed:
            click.echo(f"occystrap: {image} failed: {error}", err=True)
        _summary(
            f"{_describe(uri)} -> {destination}: {len(outcome.succeeded)} images ok,"
            f" {len(outcome.failed)} failed",
            progress,
            http,
        )
    if outcome.failed:
        raise OccystrapError(
            f"{len(outcome.failed)} of {len(images)} images failed; see the lines above"
        )


def _describe(uri: QuayURI) -> str:
    """The quay:// selection without its token, for messages."""
    since = f" since {uri.since}" if uri.since else ""
    return f"{uri.host}/{uri.org}/{uri.glob}:{uri.tag}{since}"


# -- info ---------------------------------------------------------------------------------


def _image_details(uri: RegistryURI, settings: RunSettings, http: httpx.Client) -> dict:
    """What `info` reports for one image, from its manifest and config only."""
    resolved = _open_input(uri, settings, http).resolve()
    details = {"image": str(uri.reference), **image_info(resolved.manifest, resolved.config)}
    details["manifest_digest"] = resolved.manifest_digest
    if resolved.index_digest:
        details["index_digest"] = resolved.index_digest
    return details


def info(settings: RunSettings, source: str) -> None:
    uri = parse_uri(source)
    if isinstance(uri, QuayURI):
        _info_quay(settings, uri)
        return
    if not isinstance(uri, RegistryURI):
        raise UsageError(f"info reads registry:// or quay:// images; {source!r} is not one")
    with build_client(settings.chain_settings(_registry_hosts(uri))) as http:
        details = _image_details(uri, settings, http)
    if settings.output_format == "json":
        click.echo(json.dumps(details, indent=2, sort_keys=True))
    else:
        _print_info(details)


def _info_quay(settings: RunSettings, uri: QuayURI) -> None:
    with (
        _quay_images(settings, uri) as (http, images),
        ThreadPoolExecutor(settings.parallel, thread_name_prefix="info") as pool,
    ):
        every = list(
            pool.map(
                lambda image: _image_details(RegistryURI(image.reference), settings, http), images
            )
        )
    if settings.output_format == "json":
        click.echo(json.dumps(every, indent=2, sort_keys=True))
        return
    if not every:
        click.echo(f"no image matches {_describe(uri)}")
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
