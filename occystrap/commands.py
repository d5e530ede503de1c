"""What `process` and `info` do: pick input and output from URIs, run the pipeline, report."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import httpx

from occystrap.errors import UsageError
from occystrap.inputs.registry import RegistryInput
from occystrap.inputs.tarball import TarballInput
from occystrap.middleware.builder import build_client, retries_made
from occystrap.outputs.directory import DirectoryOutput
from occystrap.outputs.registry import RegistryOutput
from occystrap.outputs.tarball import TarballOutput
from occystrap.pipeline import ImageInput, ImageOutput
from occystrap.progress import TerminalProgress, human_bytes
from occystrap.registry.client import RegistryClient
from occystrap.registry.manifest import image_info
from occystrap.settings import RunSettings
from occystrap.uris import DirURI, QuayURI, RegistryURI, TarURI, parse_uri

LOG = logging.getLogger("occystrap")


def _registry_hosts(*uris: object) -> list[str]:
    return [uri.reference.registry for uri in uris if isinstance(uri, RegistryURI)]


def _registry_client(http: httpx.Client, uri: RegistryURI, settings: RunSettings) -> RegistryClient:
    insecure = settings.insecure if uri.insecure is None else uri.insecure
    return RegistryClient(http, uri.reference.registry, insecure=insecure)


def _open_input(uri: object, settings: RunSettings, http: httpx.Client) -> ImageInput:
    if isinstance(uri, RegistryURI):
        platform = settings.with_platform(uri.os, uri.arch, uri.variant).platform
        return RegistryInput(
            _registry_client(http, uri, settings), uri.reference, platform, settings.parallel
        )
    if isinstance(uri, TarURI):
        return TarballInput(uri.path)
    if isinstance(uri, QuayURI):
        raise UsageError("quay:// sources are not supported yet")
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


def process(settings: RunSettings, source: str, destination: str, filters: list[str]) -> None:
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if filters:
        raise UsageError("filters (-f) are not available yet; run without them")
    chain = settings.chain_settings(_registry_hosts(source_uri, destination_uri))
    with build_client(chain) as http, _workdir(settings) as workdir:
        image_input = _open_input(source_uri, settings, http)
        output = _open_output(destination_uri, source_uri, settings, http, workdir)
        with TerminalProgress() as progress:
            image = image_input.fetch(workdir, progress)
            output.write(image, progress)
        tally = progress.tally
        click.echo(
            f"occystrap: {source} -> {destination}: {len(image.layers)} layers,"
            f" {human_bytes(tally.bytes)} moved in {tally.elapsed():.1f} s,"
            f" {retries_made(http)} retries",
            err=True,
        )


def info(settings: RunSettings, source: str) -> None:
    uri = parse_uri(source)
    if not isinstance(uri, RegistryURI):
        raise UsageError(f"info reads registry:// images; {source!r} is not one")
    chain = settings.chain_settings(_registry_hosts(uri))
    with build_client(chain) as http:
        image_input = _open_input(uri, settings, http)
        resolved = image_input.resolve()
    details = {"image": str(uri.reference), **image_info(resolved.manifest, resolved.config)}
    details["manifest_digest"] = resolved.manifest_digest
    if resolved.index_digest:
        details["index_digest"] = resolved.index_digest
    if settings.output_format == "json":
        click.echo(json.dumps(details, indent=2, sort_keys=True))
    else:
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
