"""registry://'s images read and written: the copy side of the scheme (endpoints/registry.py
parses the URI; `digest`, `tags` and the other questions that read no image never load this).

Reading fetches the manifest and config only; each layer's blob stays in the registry until
an output reads it. Writing asks the destination first for every blob (HEAD), mounts it from
the source repository when both are on one registry, and otherwise streams it from wherever
it is (the source registry, a file) with its digest checked on the way. An index is copied
whole: every platform's manifest, then the index byte for byte, so its digest is kept.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from occystrap import compression
from occystrap.cancel import cancellable_pool
from occystrap.digests import sha256_digest
from occystrap.errors import RegistryError
from occystrap.graph import Node
from occystrap.image import (
    Blob,
    FileBlob,
    Image,
    ImageIndex,
    ImageLike,
    Layer,
    SourceName,
    image_from_manifest,
)
from occystrap.manifest import (
    Descriptor,
    Manifest,
    ManifestIndex,
    Platform,
    PlatformDescriptor,
    build_manifest,
)
from occystrap.mediatypes import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_MANIFEST
from occystrap.registry.client import RegistryBlob, RegistryClient
from occystrap.registry.hosts import DOCKER_HUB_HOST
from occystrap.registry.reference import ImageReference
from occystrap.registry.store import RegistryStore
from occystrap.streams import Readable

if TYPE_CHECKING:
    from occystrap.pipeline import RunContext

LOG = logging.getLogger("occystrap.registry")


class RegistrySource:
    def __init__(
        self, client: RegistryClient, reference: ImageReference, pinned: Platform | None
    ) -> None:
        self.client, self.reference, self.pinned = client, reference, pinned
        self.store = RegistryStore(client, reference.repository)
        registry = None if reference.registry == DOCKER_HUB_HOST else reference.registry
        self.source = SourceName(reference.repository, reference.tag, registry)

    def read(self) -> ImageLike:
        """The image, or the index when the reference names one."""
        parsed = self.root().parsed()
        if isinstance(parsed, Manifest):
            return self.image(parsed)
        return ImageIndex(
            self.source,
            parsed.raw,
            parsed.media_type,
            tuple(parsed.manifests),
            self._read_entry,
            self.pinned,
        )

    # The graph copy's reading side (occystrap.graph.ManifestSource).

    def manifest_source(self) -> RegistrySource:
        return self

    def root(self) -> Node:
        return self.store.node(self.reference.reference)

    def manifest(self, descriptor: Descriptor) -> Node:
        return self.store.manifest(descriptor)

    def blob(self, descriptor: Descriptor) -> RegistryBlob:
        return self.store.blob(descriptor)

    def _read_entry(self, entry: PlatformDescriptor) -> Image:
        parsed = self.manifest(entry).parsed()
        if isinstance(parsed, ManifestIndex):
            raise RegistryError(f"{self.reference}: an index inside an index is not supported")
        return self.image(parsed)

    def image(self, manifest: Manifest) -> Image:
        repository = self.reference.repository
        config = self.client.read_blob(repository, manifest.config.digest)
        return image_from_manifest(
            self.source,
            manifest,
            config,
            self.blob,
            str(self.reference),
            RegistryError,
        )


class RegistryDestination:
    recompresses = True  # --dest-compress: see _push_layer

    def __init__(self, client: RegistryClient, reference: ImageReference, ctx: RunContext) -> None:
        self.client, self.reference, self.ctx = client, reference, ctx
        self.repository = reference.repository
        # Referrers are copied through this store: their blobs are mounted as images' are.
        self.store = RegistryStore(client, reference.repository, self.put_blobs)
        # zstd's encoder brings its own workers and buffers (gzip shares the run's
        # DeflatePool): one layer at a time is zstd-compressed, on one worker beside the
        # thread that hashes and sends, which keeps a run under 150 MB (a second worker
        # measured +80 MB; docs/performance.md).
        self._zstd_turn = threading.Lock()
        self._compress_threads = (
            1 if ctx.settings.compression == compression.ZSTD else ctx.settings.parallel
        )

    # The graph copy's writing side (occystrap.graph.ManifestSink).

    def manifest_sink(self) -> RegistryDestination:
        return self

    def put_blobs(self, blobs: Sequence[Layer]) -> None:
        with cancellable_pool(self.ctx.cancellation, self.ctx.settings.parallel, "push") as pool:
            list(pool.map(self._push_stored, blobs))

    def put_manifest(self, node: Node, name: SourceName | None) -> None:
        reference = node.digest if name is None else self.reference.reference
        self.store.put_manifest(reference, node.raw, node.media_type)
        LOG.info("pushed %s@%s", self.repository, node.digest)

    def write(self, item: Image) -> str:
        """One image an input or a filter made (an index comes as a graph, above)."""
        return self._write_image(item, self.reference.reference)

    def _write_image(self, image: Image, reference: str) -> str:
        distinct = {layer.digest: layer for layer in image.layers}
        with cancellable_pool(self.ctx.cancellation, self.ctx.settings.parallel, "push") as pool:
            pushed = dict(zip(distinct, pool.map(self._push_layer, distinct.values()), strict=True))
        layers = [pushed[layer.digest] for layer in image.layers]
        if any(new is not old for new, old in zip(layers, image.layers, strict=True)):
            image = image.with_layers(layers)
        config = image.config
        self._push_blob(
            image.config_digest, len(config), lambda: io.BytesIO(config), None, "config"
        )
        if image.manifest is not None:
            raw, media_type = image.manifest, image.manifest_media_type
        else:
            oci = image.is_oci or any(
                layer.compression == compression.ZSTD for layer in image.layers
            )
            raw = build_manifest(
                Descriptor(DOCKER_CONFIG, image.config_digest, len(config)),
                [Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers],
                oci=oci,
            )
            media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        self.store.put_manifest(reference, raw, media_type)
        digest = sha256_digest(raw)
        LOG.info("pushed %s@%s", self.repository, digest)
        return digest

    def _push_layer(self, layer: Layer) -> Layer:
        """Upload one layer: as stored, or compressed on the way when it is stored
        uncompressed (or, with --dest-compress, in another format)."""
        settings = self.ctx.settings
        if layer.compression == compression.NONE:
            return self._compress_and_push(layer)
        if settings.recompress and layer.compression != settings.compression:
            pushed = self._compress_and_push(layer)
            self.ctx.stats.add(recompressed=1)
            return pushed
        return self._push_stored(layer)

    def _compress_and_push(self, layer: Layer) -> Layer:
        if self.ctx.settings.compression == compression.ZSTD:
            with self._zstd_turn:
                return self._compress_and_push_now(layer)
        return self._compress_and_push_now(layer)

    def _compress_and_push_now(self, layer: Layer) -> Layer:
        # One compression of a layer at a time per registry: a second image holding it finds
        # the blob the first one made (through the blob cache) instead of making it again.
        with self.ctx.uploads.turn(self.client.registry, f"compress:{layer.diff_id}"):
            remembered = self._remembered_compression(layer)
            if remembered is not None:
                return remembered
            streamed = self._upload_while_compressing(layer)
            if streamed is not None:
                return streamed
        compressed = self._compressed(layer)
        try:
            self._push_blob(
                compressed.digest, compressed.size, compressed.open_blob, None, layer.label
            )
        finally:
            assert isinstance(compressed.blob, FileBlob)
            compressed.blob.path.unlink(missing_ok=True)
        return replace(
            compressed, blob=RegistryBlob(self.client, self.repository, compressed.digest)
        )

    def _push_stored(self, layer: Layer) -> Layer:
        """Upload the blob as it is stored."""
        from occystrap.pipeline import again_if_corrupt  # a copy's, not `manifest`'s

        again_if_corrupt(
            layer,
            lambda: self._push_blob(
                layer.digest, layer.size, layer.open_blob, layer.blob, layer.label
            ),
        )
        return layer

    def _setting(self) -> str:
        settings = self.ctx.settings
        return compression.output_setting(settings.compression, settings.compression_level)

    def _compressed_media_type(self) -> str:
        kind = self.ctx.settings.compression
        return compression.media_type_for(kind, oci=kind == compression.ZSTD)

    def _remembered_compression(self, layer: Layer) -> Layer | None:
        """The layer as an earlier run compressed it, when the destination has (or can mount)
        that blob: then nothing is compressed or uploaded. The cache only suggests: the
        registry's HEAD or mount answer decides, and the size the registry reports must be
        the size the manifest will declare."""
        cache = self.ctx.cache
        known = cache.compressed_for(layer.diff_id, self._setting())
        if known is None:
            return None
        if known.media_type != self._compressed_media_type():
            cache.forget_compressed(layer.diff_id, self._setting())
            return None
        reported = self.client.blob_size(self.repository, known.digest)
        present = reported is not None
        if not present:
            if not self._mounted(known.digest, None):
                return None
            reported = self.client.blob_size(self.repository, known.digest)
        if reported != known.size:
            # The manifest would name the blob with a size it does not have: a stale or
            # poisoned entry. Forget it; the layer is compressed afresh.
            LOG.warning(
                "blob cache: %s is %s bytes in %s, not the %d remembered for %s; compressing"
                " the layer again",
                known.digest, reported, self.repository, known.size, layer.diff_id,
            )  # fmt: skip
            cache.forget_compressed(layer.diff_id, self._setting())
            return None
        if present:
            self._count_present(known.digest)
        blob = RegistryBlob(self.client, self.repository, known.digest)
        return replace(
            layer, digest=known.digest, size=known.size, media_type=known.media_type, blob=blob
        )

    def _upload_while_compressing(self, layer: Layer) -> Layer | None:
        """Compress the layer into its upload: blocks deflate on the run's threads while
        the finished ones are hashed and sent in order, so no stage waits for the whole
        layer and nothing is written to disk. None if the registry wants the blob whole."""
        settings = self.ctx.settings
        kind, level = settings.compression, settings.compression_level
        key = f"push:{layer.diff_id}"
        self.ctx.progress.start(key, None, layer.label)

        @contextmanager
        def making() -> Iterator[compression.CompressedStream]:
            with layer.open_tar() as source:
                yield compression.CompressedStream(
                    source, kind, level, threads=self._compress_threads, pool=self.ctx.deflate_pool
                )

        def sent(n: int) -> None:
            self.ctx.progress.advance(key, n)
            self.ctx.stats.add(bytes_uploaded=n)

        made = self.client.upload_streamed(
            self.repository, making, sent, lambda: self.ctx.progress.restart(key, 0)
        )
        self.ctx.progress.finish(key)
        if made is None:
            return None
        digest, size = made
        media_type = self._compressed_media_type()
        registry = self.client.registry
        self.ctx.cache.record_compressed(layer.diff_id, self._setting(), digest, size, media_type)
        self.ctx.cache.record_location(digest, registry, self.repository)
        self.ctx.uploads.record(registry, digest, self.repository)
        self._count_uploaded(digest, size)
        blob = RegistryBlob(self.client, self.repository, digest)
        return replace(layer, digest=digest, size=size, media_type=media_type, blob=blob)

    def _compressed(self, layer: Layer) -> Layer:
        """The layer compressed deterministically into the work directory, on the run's
        shared deflate threads (every core on a big layer, never more than -j in all)."""
        settings = self.ctx.settings
        kind, level = settings.compression, settings.compression_level
        path = self.ctx.workdir / f"{layer.diff_id.replace(':', '-')}.{kind}"
        with layer.open_tar() as source, open(path, "wb") as out:
            digest, size = compression.compress_stream(
                source,
                out,
                kind,
                level,
                threads=self._compress_threads,
                pool=self.ctx.deflate_pool,
            )
        media_type = self._compressed_media_type()
        self.ctx.cache.record_compressed(layer.diff_id, self._setting(), digest, size, media_type)
        return replace(layer, digest=digest, size=size, media_type=media_type, blob=FileBlob(path))

    def _present_or_mounted(self, digest: str, blob: Blob | None) -> bool:
        """Whether the destination repository has `digest` now without an upload: it is there
        already, or a repository of the same registry lends it (the source's, or one the
        blob cache remembers)."""
        if self.client.blob_exists(self.repository, digest):
            self._count_present(digest)
            return True
        return self._mounted(digest, blob)

    def _count_uploaded(self, digest: str, size: int) -> None:
        LOG.info("blob %s: uploaded to %s (%d bytes)", digest, self.repository, size)
        self.ctx.stats.add(uploaded=1)

    def _count_present(self, digest: str) -> None:
        LOG.info("blob %s: already in %s", digest, self.repository)
        self.ctx.stats.add(skipped=1)
        self.ctx.cache.record_location(digest, self.client.registry, self.repository)

    def _mounted(self, digest: str, blob: Blob | None) -> bool:
        """Whether a repository of the same registry (the source's, or one the blob cache
        remembers) lent `digest` to the destination repository."""
        stats, cache, registry = self.ctx.stats, self.ctx.cache, self.client.registry
        candidates = []
        if isinstance(blob, RegistryBlob) and blob.registry == registry:
            candidates.append(blob.repository)
        candidates += self.ctx.uploads.repositories(registry, digest)
        candidates += cache.locations(digest, registry)
        for source in dict.fromkeys(candidates):
            if source == self.repository:
                continue
            if self.client.mount_blob(self.repository, digest, source):
                LOG.info("blob %s: mounted from %s", digest, source)
                stats.add(mounted=1)
                cache.record_location(digest, registry, self.repository)
                self.ctx.uploads.record(registry, digest, self.repository)
                return True
            cache.forget_location(digest, registry, source)
        return False

    def _push_blob(
        self,
        digest: str,
        size: int,
        opener: Callable[[], AbstractContextManager[Readable]],
        blob: Blob | None,
        label: str,
    ) -> None:
        # One push of a digest to a registry at a time: images sharing a blob mount it from
        # wherever the first one put it.
        with self.ctx.uploads.turn(self.client.registry, digest):
            if self._present_or_mounted(digest, blob):
                return
            self._upload(digest, size, opener, label)
            self.ctx.uploads.record(self.client.registry, digest, self.repository)

    def _upload(
        self,
        digest: str,
        size: int,
        opener: Callable[[], AbstractContextManager[Readable]],
        label: str,
    ) -> None:
        stats = self.ctx.stats
        progress = self.ctx.progress
        key = "push:" + digest
        progress.start(key, size, label)

        def sent(n: int) -> None:
            progress.advance(key, n)
            stats.add(bytes_uploaded=n)

        self.client.upload_blob(
            self.repository,
            digest,
            opener,
            size,
            on_bytes=sent,
            on_restart=lambda: progress.restart(key, 0),
        )
        progress.finish(key)
        self._count_uploaded(digest, size)
        self.ctx.cache.record_location(digest, self.client.registry, self.repository)
