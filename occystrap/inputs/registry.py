"""Pull: resolve a manifest (choosing a platform from an index) and fetch layers in parallel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from occystrap.compression import NONE, from_media_type
from occystrap.errors import RegistryError
from occystrap.pipeline import Image, Layer, ProgressSink
from occystrap.registry.client import RegistryClient
from occystrap.registry.manifest import (
    Descriptor,
    Manifest,
    ManifestIndex,
    Platform,
    parse_manifest,
    select_platform,
)
from occystrap.registry.reference import ImageReference


@dataclass
class InflatedLayer(Layer):
    """A layer whose verified uncompressed tar may have been kept at `tar_path` on download."""

    tar_path: Path | None = None

    @contextmanager
    def open_tar(self) -> Iterator[BinaryIO]:
        if self.tar_path is None:
            with super().open_tar() as stream:
                yield stream
        else:
            with open(self.tar_path, "rb") as stream:
                yield stream


@dataclass
class ResolvedImage:
    """A single-platform manifest and its config, fetched without touching any layer."""

    manifest: Manifest
    manifest_digest: str
    config_raw: bytes
    config: dict
    index_digest: str | None = None


class RegistryInput:
    def __init__(
        self,
        client: RegistryClient,
        reference: ImageReference,
        platform: Platform,
        parallel: int = 4,
        keep_tars: bool = False,
    ) -> None:
        """`keep_tars`: keep each layer's uncompressed tar, inflated once while verifying its
        diff_id, for outputs that write tars (tar://, dir://) instead of inflating again."""
        self.client = client
        self.reference = reference
        self.platform = platform
        self.parallel = parallel
        self.keep_tars = keep_tars

    def resolve(self) -> ResolvedImage:
        repository = self.reference.repository
        raw, content_type, digest = self.client.get_manifest(repository, self.reference.reference)
        parsed = parse_manifest(raw, content_type)
        index_digest = None
        if isinstance(parsed, ManifestIndex):
            chosen = select_platform(
                parsed, self.platform.os, self.platform.architecture, self.platform.variant
            )
            index_digest = digest
            raw, content_type, digest = self.client.get_manifest(repository, chosen.digest)
            parsed = parse_manifest(raw, content_type)
            if isinstance(parsed, ManifestIndex):
                raise RegistryError(f"{self.reference}: an index inside an index is not supported")
        config_raw = self.client.read_blob(repository, parsed.config.digest)
        try:
            config = json.loads(config_raw)
        except ValueError:
            raise RegistryError(f"{self.reference}: the image config is not JSON") from None
        return ResolvedImage(parsed, digest, config_raw, config, index_digest)

    def fetch(self, workdir: Path, progress: ProgressSink) -> Image:
        resolved = self.resolve()
        diff_ids = resolved.config.get("rootfs", {}).get("diff_ids", [])
        descriptors = resolved.manifest.layers
        if len(diff_ids) != len(descriptors):
            raise RegistryError(
                f"{self.reference}: the manifest lists {len(descriptors)} layers but the config"
                f" has {len(diff_ids)} diff_ids; the image is corrupt"
            )
        history = [h for h in resolved.config.get("history", []) if not h.get("empty_layer")]
        created_by = [h.get("created_by", "") for h in history]
        created_by += [""] * (len(descriptors) - len(created_by))

        unique: dict[str, tuple[Descriptor, str]] = {}
        for descriptor, diff_id in zip(descriptors, diff_ids, strict=True):
            unique.setdefault(descriptor.digest, (descriptor, diff_id))
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="pull") as pool:
            futures = {
                digest: pool.submit(self._fetch_layer, descriptor, diff_id, workdir, progress)
                for digest, (descriptor, diff_id) in unique.items()
            }
            fetched = {digest: future.result() for digest, future in futures.items()}
        layers = [
            InflatedLayer(
                digest=d.digest,
                size=d.size,
                media_type=d.media_type,
                diff_id=diff_id,
                path=fetched[d.digest][0],
                uncompressed_size=fetched[d.digest][1],
                created_by=by,
                tar_path=fetched[d.digest][2],
            )
            for d, diff_id, by in zip(descriptors, diff_ids, created_by, strict=True)
        ]
        return Image(
            name=self.reference.repository,
            tag=self.reference.tag,
            config=resolved.config_raw,
            config_digest=resolved.manifest.config.digest,
            layers=layers,
            manifest_media_type=resolved.manifest.media_type,
            manifest=resolved.manifest.raw,
            extra={"registry": self.reference.registry},
        )

    def _fetch_layer(
        self, descriptor: Descriptor, diff_id: str, workdir: Path, progress: ProgressSink
    ) -> tuple[Path, int | None, Path | None]:
        key = descriptor.digest
        progress.start(key, descriptor.size, key.partition(":")[2][:12])
        dest = workdir / key.replace(":", "-")
        kind = from_media_type(descriptor.media_type)
        tar_dest = dest.with_name(dest.name + ".tar") if self.keep_tars and kind != NONE else None
        fetched = self.client.download_blob(
            self.reference.repository,
            descriptor.digest,
            dest,
            size=descriptor.size,
            diff_id=diff_id,
            compression=kind,
            on_bytes=lambda n: progress.advance(key, n),
            on_restart=lambda: progress.restart(key, 0),
            tar_dest=tar_dest,
        )
        progress.finish(key)
        return dest, fetched.uncompressed_size, tar_dest
