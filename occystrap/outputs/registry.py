"""Push: blobs in parallel (exists? mount? upload), then the config, then the manifest."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from occystrap import compression
from occystrap.pipeline import Image, Layer, ProgressSink
from occystrap.registry.client import RegistryClient
from occystrap.registry.manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    build_manifest,
)
from occystrap.registry.reference import ImageReference

LOG = logging.getLogger("occystrap.push")


class RegistryOutput:
    def __init__(
        self,
        client: RegistryClient,
        reference: ImageReference,
        workdir: Path,
        *,
        compression_kind: str = compression.GZIP,
        parallel: int = 4,
        mount_from: list[str] | None = None,
    ) -> None:
        self.client = client
        self.reference = reference
        self.workdir = workdir
        self.compression_kind = compression_kind
        self.parallel = parallel
        self.mount_from = mount_from or []

    def write(self, image: Image, progress: ProgressSink) -> None:
        repository = self.reference.repository
        # Identical source blobs compress to identical blobs, so each is prepared once.
        unique = {layer.digest: layer for layer in image.layers}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="push") as pool:
            futures = {
                digest: pool.submit(self._prepare_and_push, layer, progress)
                for digest, layer in unique.items()
            }
            pushed = {digest: future.result() for digest, future in futures.items()}
        layers = [pushed[layer.digest] for layer in image.layers]
        changed = any(new is not old for new, old in zip(layers, image.layers, strict=True))
        config_path = self.workdir / ("config-" + image.config_digest.replace(":", "-"))
        config_path.write_bytes(image.config)
        self._push_path(image.config_digest, config_path, len(image.config), progress)

        if image.manifest is not None and not changed:
            raw, media_type = image.manifest, image.manifest_media_type
        else:
            oci = image.manifest_media_type == OCI_MANIFEST or any(
                layer.compression == compression.ZSTD for layer in layers
            )
            raw = build_manifest(
                Descriptor(DOCKER_CONFIG, image.config_digest, len(image.config)),
                [Descriptor(layer.media_type, layer.digest, layer.size) for layer in layers],
                oci=oci,
            )
            media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        tag = self.reference.reference
        self.client.put_manifest(repository, tag, raw, media_type)
        LOG.info("pushed %s (sha256:%s)", self.reference, hashlib.sha256(raw).hexdigest())

    def _compressed(self, layer: Layer) -> Layer:
        """Layers travel as they are; only uncompressed ones are compressed (deterministically)."""
        if layer.compression != compression.NONE:
            return layer
        dest = self.workdir / f"{layer.diff_id.replace(':', '-')}.{self.compression_kind}"
        with layer.open_blob() as source, open(dest, "wb") as out:
            digest, size = compression.compress_stream(source, out, self.compression_kind)
        oci = self.compression_kind == compression.ZSTD
        return replace(
            layer,
            digest=digest,
            size=size,
            path=dest,
            media_type=compression.media_type_for(self.compression_kind, oci=oci),
        )

    def _prepare_and_push(self, layer: Layer, progress: ProgressSink) -> Layer:
        """Compress (if needed) and upload one layer in a worker: zlib releases the GIL, so
        layers compress on every core and overlap other layers' uploads."""
        prepared = self._compressed(layer)
        self._push_path(prepared.digest, prepared.path, prepared.size, progress)
        return prepared

    def _push_path(self, digest: str, path: Path, size: int, progress: ProgressSink) -> None:
        repository = self.reference.repository
        if self.client.blob_exists(repository, digest):
            LOG.debug("%s already in %s", digest, repository)
            return
        for source in self.mount_from:
            if source != repository and self.client.mount_blob(repository, digest, source):
                LOG.debug("mounted %s from %s", digest, source)
                return
        key = "push:" + digest
        progress.start(key, size, digest.partition(":")[2][:12])
        self.client.upload_blob(
            repository,
            digest,
            path,
            size,
            on_bytes=lambda n: progress.advance(key, n),
            on_restart=lambda: progress.restart(key, 0),
        )
        progress.finish(key)
