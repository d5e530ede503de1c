"""Pulling without waiting: the next layer downloads while this one is inflated and written.

`prefetched_layers` hands an output (the docker-save writer) the image's layers in order.
The first layer (the only one, in an image of one huge layer) streams straight from the
network; the later ones are spooled to temporary files by download threads working up to
`-j` layers ahead. The output reads a spool as it grows, so it inflates a layer while the
layer is still arriving, and the next layers download meanwhile. Temporary disk holds at
most `-j` compressed layers, and none for an image of one layer.

`ReadAhead` runs any reader in a thread of its own, a few chunks ahead of its consumer:
one receives and hashes a streamed blob, another inflates a layer, while the writer
hashes the tar and writes it."""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from occystrap.atomic import discard_tree
from occystrap.cancel import Cancellation
from occystrap.errors import writing_to
from occystrap.image import Blob, Layer
from occystrap.streams import CHUNK_SIZE, Readable

if TYPE_CHECKING:
    from occystrap.pipeline import ProgressSink, RunContext

# How long a reader waits for its writer between checks for an interrupt.
_WAKE_SECONDS = 0.5


class _Aborted(Exception):
    """The spool's reader went away: its download stops."""


class Spool:
    """A temporary file one thread appends to while another reads it from the start.

    The writer reports the end (or its failure); a reader waits for bytes not written yet
    and raises the writer's failure when it reaches it.
    """

    def __init__(self, path: Path, cancellation: Cancellation | None = None) -> None:
        self.path = path
        self.cancellation = cancellation or Cancellation()  # the run's: stops a waiting reader
        self._changed = threading.Condition()
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._aborted = False

    def fill(self, source: Readable) -> None:
        """Copy `source` to the end into the spool (in the writer's thread)."""
        try:
            with writing_to(self.path.parent), open(self.path, "wb", buffering=0) as out:
                while chunk := source.read(CHUNK_SIZE):
                    if self._aborted:
                        raise _Aborted()
                    out.write(chunk)
                    with self._changed:
                        self._written += len(chunk)
                        self._changed.notify_all()
        except BaseException as error:
            with self._changed:
                self._error = error
                self._changed.notify_all()
            raise
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def abort(self) -> None:
        """Stop the writer at its next chunk: nobody will read what it writes."""
        self._aborted = True

    def _wait_for(self, position: int) -> int:
        """Bytes readable at `position` (0 at the end), waiting for the writer if need be."""
        with self._changed:
            while True:
                if self._error is not None:
                    raise self._error
                if self._written > position or self._done:
                    return self._written - position
                self._changed.wait(_WAKE_SECONDS)
                self.cancellation.check()

    @contextmanager
    def reader(self) -> Iterator[Readable]:
        self._wait_for(0)  # the file exists once anything (or the end) was written
        with open(self.path, "rb", buffering=0) as handle:
            yield _SpoolReader(self, handle)


class _SpoolReader:
    def __init__(self, spool: Spool, handle: BinaryIO) -> None:
        self._spool, self._handle = spool, handle
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        available = self._spool._wait_for(self._position)
        if size < 0 or size > available:
            size = available
        data = self._handle.read(size) if size else b""
        self._position += len(data)
        return data


@dataclasses.dataclass(frozen=True)
class SpooledBlob:
    """A remote blob read through its spool. The download thread verified it against the
    layer's digest (a reader gets the mismatch instead of the end), so readers do not hash
    it again; `source` is the blob itself, to fetch once more if it was corrupt."""

    spool: Spool
    source: Blob
    local = False
    verified = True

    def __str__(self) -> str:
        return str(self.source)

    def open(self) -> AbstractContextManager[Readable]:
        return self.spool.reader()


@dataclasses.dataclass(frozen=True)
class StreamedBlob:
    """A remote blob read straight from the network by a thread of its own, which also
    checks it against the layer's digest (a reader gets the mismatch instead of the end).
    For the layer the output needs at once a spool would only add a pass through the disk
    (a write and a read of the whole blob, which for one huge layer cost more system time
    than anything else)."""

    layer: Layer  # as the image has it: `source` is its blob
    progress: ProgressSink
    cancellation: Cancellation
    local = False
    verified = True

    @property
    def source(self) -> Blob:
        return self.layer.blob

    def __str__(self) -> str:
        return str(self.source)

    @contextmanager
    def open(self) -> Iterator[Readable]:
        with (
            _fetching(self.layer, self.progress) as blob,
            read_ahead(blob, self.cancellation) as ahead,
        ):
            yield ahead


def unspooled(layer: Layer) -> Layer:
    """`layer` reading its blob from where it lives, not through a spool or a stream of its
    own."""
    if isinstance(layer.blob, SpooledBlob | StreamedBlob):
        return dataclasses.replace(layer, blob=layer.blob.source)
    return layer


@contextmanager
def _fetching(layer: Layer, progress: ProgressSink) -> Iterator[Readable]:
    """The layer's remote blob, verified as it is read, its progress shown as a fetch."""
    key = f"fetch:{layer.digest}"
    progress.start(key, layer.size, layer.label)
    with layer.open_blob(lambda n: progress.advance(key, n)) as verified:
        yield verified
    progress.finish(key)


def _download(layer: Layer, spool: Spool, progress: ProgressSink) -> None:
    with _fetching(layer, progress) as verified:
        spool.fill(verified)


def prefetched_layers(image_layers: tuple[Layer, ...], ctx: RunContext) -> Iterator[Layer]:
    """The layers in order, each remote blob spooled by download threads working at most
    `-j` distinct layers ahead of the consumer. A spool is deleted once the consumer has
    moved past the layer's last use. A layer the consumer reaches before its download was
    queued (the first, and every one of an image of one layer), and needs only once, is not
    spooled: it streams from the network as the consumer reads it."""
    order: list[str] = []
    last_use: dict[str, int] = {}
    first: dict[str, Layer] = {}
    for position, layer in enumerate(image_layers):
        if layer.digest not in first:
            first[layer.digest] = layer
            order.append(layer.digest)
        last_use[layer.digest] = position
    remote = [digest for digest in order if not getattr(first[digest].blob, "local", False)]
    directory = ctx.workdir / f"spool-{id(image_layers):x}"
    spools: dict[str, Spool] = {}
    futures: dict[str, Future[None]] = {}
    streamed: set[str] = set()
    ahead = max(1, ctx.settings.parallel)
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="fetch")

    def download_through(index: int) -> None:
        """Queue the downloads of the remote layers up to `index` (in `remote`)."""
        for digest in remote[: index + 1]:
            if digest not in spools and digest not in streamed:
                directory.mkdir(parents=True, exist_ok=True)
                spool = Spool(directory / digest.replace(":", "-"), ctx.cancellation)
                spools[digest] = spool
                futures[digest] = pool.submit(_download, first[digest], spool, ctx.progress)

    try:
        for position, layer in enumerate(image_layers):
            spool = spools.get(layer.digest)
            blob: Blob = layer.blob
            if layer.digest in remote:
                if spool is None and last_use[layer.digest] == position:
                    streamed.add(layer.digest)
                    blob = StreamedBlob(layer, ctx.progress, ctx.cancellation)
                download_through(remote.index(layer.digest) + ahead)
                spool = spools.get(layer.digest)
            if spool is not None:
                blob = SpooledBlob(spool, layer.blob)
            yield layer if blob is layer.blob else dataclasses.replace(layer, blob=blob)
            if last_use[layer.digest] == position and spool is not None:
                _discard(spool, futures[layer.digest])
    finally:
        for digest, spool in spools.items():
            spool.abort()
            futures[digest].cancel()
        pool.shutdown(wait=True)
        discard_tree(directory)


def _discard(spool: Spool, download: Future[None]) -> None:
    spool.abort()
    if download.done() or download.cancel():
        spool.path.unlink(missing_ok=True)


class ReadAhead:
    """Reads `source` in a thread of its own, up to `depth` chunks ahead of `read`, so the
    producer's work (inflating, hashing) overlaps the consumer's (writing). Errors reach the
    consumer where they happened in the stream."""

    def __init__(
        self, source: Readable, cancellation: Cancellation | None = None, depth: int = 4
    ) -> None:
        self._source = source
        self._cancellation = cancellation or Cancellation()  # the run's: stops a waiting read
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._item = b""  # the chunk being handed out, from `_offset` on
        self._offset = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="read-ahead", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stopped.is_set():
                chunk = self._source.read(CHUNK_SIZE)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stopped.is_set():
            try:
                self._chunks.put(item, timeout=_WAKE_SECONDS)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        if self._offset >= len(self._item):
            item = self._next()
            if isinstance(item, BaseException):
                raise item
            self._item, self._offset = item, 0
            if not item:
                self._chunks.put_nowait(b"")  # the end stays the end for later reads
                return b""
        if self._offset == 0 and (size < 0 or size >= len(self._item)):
            self._offset = len(self._item)
            return self._item  # a whole chunk: no copy
        end = len(self._item) if size < 0 else self._offset + size
        data = self._item[self._offset : end]
        self._offset += len(data)
        return data

    def _next(self) -> bytes | BaseException:
        while True:
            try:
                return self._chunks.get(timeout=_WAKE_SECONDS)
            except queue.Empty:
                self._cancellation.check()
                if not self._thread.is_alive() and self._chunks.empty():
                    return b""

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()


@contextmanager
def read_ahead(source: Readable, cancellation: Cancellation | None = None) -> Iterator[Readable]:
    """`source` read by a `ReadAhead`, stopped when the block ends."""
    ahead = ReadAhead(source, cancellation)
    try:
        yield ahead
    finally:
        ahead.close()
