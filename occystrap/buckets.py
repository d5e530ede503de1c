"""OCI image layouts kept in object storage buckets (`s3://`, `gs://`), read and written by
the same layout code as a directory (`occystrap.ocilayout`).

A cloud supplies an `ObjectStore` (a handful of object operations spoken through the run's
one client, signed by its plug-in in the chain); `BucketLayout` turns it into both the
`MemberSource` the layout reader reads and the `LayoutStorage` the layout writer writes, so
the layout logic is written once for every place. Blobs are named by digest, so one already
in the bucket is never uploaded again; `index.json` is written last and conditionally
(on the version read), so two writers never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from occystrap.cancel import Cancellation
from occystrap.endpoints import (
    Endpoint,
    byte_size_option,
    non_empty_option,
    query_options,
    split_query,
)
from occystrap.errors import DigestMismatchError, OccystrapError, UsageError
from occystrap.middleware.extensions import BUFFER, REPLAYABLE, RETRY_UNSAFE
from occystrap.middleware.plugins import MiddlewareFactory
from occystrap.registry.blobs import RemoteBlobReader
from occystrap.streams import CHUNK_SIZE, Readable

# The layout code and the pipeline load when a bucket is read or written, not when a cloud
# plug-in's middleware joins the chain of a run that never names a bucket.
if TYPE_CHECKING:
    from occystrap.graph import StoreSource
    from occystrap.image import ImageLike
    from occystrap.ocilayout import LayoutDestination, OciLayoutReader
    from occystrap.pipeline import RunContext

# Attempts at replacing index.json while other writers keep changing it.
_INDEX_ATTEMPTS = 10
# Blobs larger than this go up in parts of this size (clouds' own defaults are close).
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 refuses smaller parts but the last
BUCKET_OPTIONS = ("tag", "part_size")
SMALL_OBJECT_LIMIT = 16 * 1024 * 1024  # index.json, manifests and configs are read whole


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version: str  # what a conditional write names: S3's ETag, GCS's generation


class ObjectStore(Protocol):
    """One bucket, through the run's client. Keys are whole object names."""

    where: str  # "s3://bucket/prefix", for messages
    part_size: int  # objects larger than this go up with `put_stream`, in parts
    # (scheme, bucket name): which bucket this is, however the URI reaching it was written;
    # what writers of one run take turns on. A store without it is told apart by `where`.
    bucket_id: tuple[str, str]

    def stat(self, key: str) -> ObjectInfo | None: ...

    def get(self, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and version, None when absent."""
        ...

    def open(self, key: str) -> AbstractContextManager[Readable]:
        """A large object as a stream that resumes with Range when the connection is cut."""
        ...

    def put(self, key: str, data: bytes, *, version: str | None, absent: bool) -> bool:
        """Write a small object only if it still has `version` (or, `absent`, does not
        exist yet); False when another writer got there first."""
        ...

    def put_stream(
        self, key: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        """Stream an object larger than `part_size` in, part by part; nothing appears
        under `key` if reading fails."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; one already gone is no error."""
        ...


class ReleasableBody(httpx.SyncByteStream):
    """An upload body that can be sent again (retries, auth) and lets go of its bytes once
    its request is done. Requests and responses sit in reference cycles that only the next
    garbage collection frees: a body they held would keep every part of a large upload in
    memory until then."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data

    def release(self) -> None:
        self._data = b""


def marked_only_factory(
    name: str, middleware: Callable[[httpx.BaseTransport], httpx.BaseTransport]
) -> MiddlewareFactory:
    """The plug-in factory of a bucket scheme's middleware: it acts only on the requests its
    scheme marks, so there is nothing to choose and it takes no options."""

    def factory(
        next_transport: httpx.BaseTransport, options: dict[str, str]
    ) -> httpx.BaseTransport:
        if options:
            raise ValueError(f"{name} takes no options")
        return middleware(next_transport)

    return factory


def send_object_request(
    http: httpx.Client,
    method: str,
    url: str,
    mark: dict[str, object],
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    safe_twice: bool = False,
) -> httpx.Response:
    """One request to a bucket's API through the run's client, carrying `mark` (the
    extension its cloud's plug-in authorises by); the reply is read whole. A body may be sent
    again (retries, auth) and is let go once the request is done; `safe_twice` lets a write
    whose repeat does no harm be retried."""
    extensions: dict[str, object] = {**mark, BUFFER: SMALL_OBJECT_LIMIT}
    if safe_twice:
        extensions[RETRY_UNSAFE] = True
    headers = dict(headers or {})
    body = None
    if content is not None:
        body = ReleasableBody(content)
        headers["Content-Length"] = str(len(content))
        extensions[REPLAYABLE] = True
    request = http.build_request(
        method, url, params=params, headers=headers, content=body, extensions=extensions
    )
    try:
        return http.send(request)
    finally:
        if body is not None:
            body.release()


@contextlib.contextmanager
def open_object(
    http: httpx.Client,
    url: str,
    what: str,
    mark: dict[str, object],
    cancellation: Cancellation | None,
) -> Iterator[Readable]:
    """An object streamed from `url` (a request carrying `mark`), cut by the run's
    cancellation."""
    reader = RemoteBlobReader(http, url, what, extensions=mark, cancellation=cancellation)
    try:
        yield reader
    finally:
        reader.close()


def read_part(source: Readable, size: int, key: str) -> bytes:
    """The next `size` bytes of `source` (one part of an upload, or a whole small object)."""
    chunks, wanted = [], size
    while wanted:
        chunk = source.read(min(wanted, CHUNK_SIZE))
        if not chunk:
            raise DigestMismatchError(f"{key}: the source ended {wanted} bytes early")
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def expect_end(source: Readable, key: str) -> None:
    """Read past the last byte, so a verifying reader checks the digest before the last
    part is sent and the object takes its name."""
    if source.read(1):
        raise DigestMismatchError(f"{key}: the source holds more bytes than its size says")


@dataclass(frozen=True)
class BucketBlob:
    """A layer blob kept in a bucket, streamed when an output reads it."""

    store: ObjectStore
    key: str
    local = False

    def __str__(self) -> str:
        return f"{self.store.where}: {self.key}"

    def open(self) -> AbstractContextManager[Readable]:
        return self.store.open(self.key)


_INDEX_LOCKS: dict[tuple[str, str, str], threading.RLock] = {}
_INDEX_LOCKS_GUARD = threading.Lock()


def _index_lock(name: tuple[str, str, str]) -> threading.RLock:
    """One lock per bucket `index.json` (by scheme, bucket and key) in this process: the
    threads of one run change it in turn instead of racing on the store's conditional
    write (which other processes still need, and which some stores, such as GCS emulators,
    do not enforce). Re-entrant, so a change may itself change the index without waiting
    on itself."""
    with _INDEX_LOCKS_GUARD:
        return _INDEX_LOCKS.setdefault(name, threading.RLock())


class BucketLayout:
    """An OCI layout under a bucket prefix: a `MemberSource` and a `LayoutStorage`."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.objects = store
        self.prefix = prefix.strip("/")
        self.where = store.where
        # A third-party plug-in's store may predate `bucket_id`: its `where` (as shown,
        # never parsed) stands for the bucket, so only writers reaching it through the same
        # URI take turns, and the store's conditional write alone keeps the others apart.
        self.bucket_id: tuple[str, str] = getattr(store, "bucket_id", None) or ("", store.where)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def location(self, name: str) -> str:
        """SCHEME://BUCKET/KEY, however the URIs reaching the layout were written."""
        scheme, bucket = self.bucket_id
        place = f"{scheme}://{bucket}" if scheme else bucket
        return f"{place}/{self._key(name)}"

    # MemberSource: what the layout reader needs.

    def has(self, name: str) -> bool:
        return self.objects.stat(self._key(name)) is not None

    def size(self, name: str) -> int:
        info = self.objects.stat(self._key(name))
        if info is None:
            raise OccystrapError(f"{self.where}: {name} is missing")
        return info.size

    def read(self, name: str) -> bytes:
        found = self.objects.get(self._key(name))
        if found is None:
            raise OccystrapError(f"{self.where}: {name} is missing")
        return found[0]

    def blob(self, name: str) -> BucketBlob:
        return BucketBlob(self.objects, self._key(name))

    # LayoutStorage: what the layout writer needs.

    def holds_layout(self) -> bool:
        from occystrap.ocilayout import LAYOUT_FILE

        return self.has(LAYOUT_FILE)

    def create_once(self, name: str, data: bytes) -> None:
        key = self._key(name)
        if self.objects.stat(key) is None:  # a look costs less than a refused write
            self.objects.put(key, data, version=None, absent=True)

    def present(self, name: str, size: int) -> bool:
        info = self.objects.stat(self._key(name))
        return info is not None and info.size == size

    def store(
        self, name: str, size: int, opener: Callable[[], AbstractContextManager[Readable]]
    ) -> None:
        key = self._key(name)
        if size > self.objects.part_size:
            self.objects.put_stream(key, size, opener)
            return
        with opener() as source:
            data = read_part(source, size, key)
            expect_end(source, key)
        self.objects.put(key, data, version=None, absent=False)

    def read_index(self) -> bytes | None:
        from occystrap.ocilayout import INDEX_FILE

        found = self.objects.get(self._key(INDEX_FILE))
        return None if found is None else found[0]

    def change_index(self, change: Callable[[bytes | None], bytes]) -> None:
        """Read, change and write back `index.json` on the condition that nobody wrote it
        in between; start again from what they wrote when somebody did."""
        from occystrap.ocilayout import INDEX_FILE

        key = self._key(INDEX_FILE)
        with _index_lock((*self.bucket_id, key)):
            for _ in range(_INDEX_ATTEMPTS):
                found = self.objects.get(key)
                current, version = (None, None) if found is None else found
                if self.objects.put(key, change(current), version=version, absent=found is None):
                    return
        raise OccystrapError(
            f"{self.where}: {INDEX_FILE} kept changing under other writers"
            f" ({_INDEX_ATTEMPTS} attempts); try again"
        )

    def read_blob(self, name: str) -> bytes | None:
        found = self.objects.get(self._key(name))
        return None if found is None else found[0]

    def write_file(self, name: str, data: bytes) -> None:
        """One PUT, conditional on the version just read: a write by another writer in
        between is refused, not overwritten."""
        key = self._key(name)
        found = self.objects.get(key)
        version = None if found is None else found[1]
        if not self.objects.put(key, data, version=version, absent=found is None):
            raise OccystrapError(f"{self.where}: {name} changed under another writer; try again")

    def delete_blob(self, name: str) -> None:
        self.objects.delete(self._key(name))

    def abandon(self) -> None:
        """Objects a failed run stored stay: a bucket holds no directory skeleton, and the
        next copy finds those blobs already there instead of uploading them again."""


# The endpoint of a bucket scheme.


@dataclass
class BucketURI(Endpoint):
    """SCHEME://BUCKET[/PREFIX][?tag=TAG&part_size=SIZE]: an OCI layout in a bucket."""

    blobs_are = "uploaded"

    bucket: str
    prefix: str
    tag: str | None
    part_size: int
    open_store: Callable[[BucketURI, RunContext], ObjectStore]

    def layout(self, ctx: RunContext) -> BucketLayout:
        return BucketLayout(self.open_store(self, ctx), self.prefix)

    def open_input(self, ctx: RunContext) -> BucketSource:
        return BucketSource(self.layout(ctx), self.tag, self.shown)

    def open_output(self, ctx: RunContext) -> LayoutDestination:
        from occystrap.ocilayout import LayoutDestination, OciLayoutWriter

        destination = LayoutDestination(OciLayoutWriter(self.layout(ctx), ctx), self.tag)
        destination.writer.check()
        return destination


class BucketSource:
    def __init__(self, layout: BucketLayout, tag: str | None, shown: str) -> None:
        self.layout, self.tag, self.shown = layout, tag, shown

    def _reader(self) -> OciLayoutReader:
        from occystrap.ocilayout import LAYOUT_FILE, OciLayoutReader

        if not self.layout.holds_layout():
            raise OccystrapError(
                f"{self.shown} is not an OCI image layout (no {LAYOUT_FILE}); write one with"
                f" `occystrap process SOURCE {self.shown}`"
            )
        return OciLayoutReader(self.layout)

    def read(self) -> ImageLike:
        return self._reader().read(self.tag)

    def manifest_source(self) -> StoreSource:
        return self._reader().manifests(self.tag)


def parse_bucket_uri(
    text: str, rest: str, open_store: Callable[[BucketURI, RunContext], ObjectStore]
) -> BucketURI:
    """`BUCKET[/PREFIX][?tag=TAG&part_size=SIZE]`, for a cloud plug-in's scheme."""
    body, query = split_query(rest)
    options = query_options(text, query, BUCKET_OPTIONS)
    bucket, _, prefix = body.partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {text!r}: expected SCHEME://BUCKET[/PREFIX]")
    part_size = DEFAULT_PART_SIZE
    if "part_size" in options:
        part_size = byte_size_option(text, "part_size", options["part_size"])
        if part_size < MIN_PART_SIZE:
            raise UsageError(f"part_size in {text!r} is under the 5 MiB clouds accept")
    return BucketURI(
        bucket=bucket,
        prefix=prefix.strip("/"),
        tag=non_empty_option(text, "tag", options.get("tag")),
        part_size=part_size,
        open_store=open_store,
    )
