"""Streaming blob transfer: verified, resumable downloads and replayable upload bodies.

A failure while reading a body happens after the transport returned its response, so the
chain's Retry cannot see it; resuming with `Range` lives here, on top of the chain.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping

import httpx

from occystrap.cancel import Cancellation
from occystrap.errors import RegistryError
from occystrap.middleware.extensions import SERVED_BY, SKIP_MIRRORS
from occystrap.registry.errors import registry_error
from occystrap.streams import CHUNK_SIZE, Readable

LOG = logging.getLogger("occystrap.blobs")

# Slower than this over a whole --timeout window, a layer transfer counts as stalled and resumes.
MIN_LAYER_SPEED = 1024

# Errors raised while a body streams: the connection died, not the request.
BODY_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)


class ReopeningBody(httpx.SyncByteStream):
    """An upload body that opens its source anew on every iteration, so a retry can resend it.

    Chunks keep HTTP/2 uploads linear: httpx slices a large `bytes` body quadratically.
    """

    def __init__(
        self,
        opener: Callable[[], contextlib.AbstractContextManager[Readable]],
        on_bytes: Callable[[int], None] = lambda n: None,
        cancellation: Cancellation | None = None,
    ) -> None:
        self.opener = opener
        self.on_bytes = on_bytes
        self.cancellation = cancellation or Cancellation()

    def __iter__(self) -> Iterator[bytes]:
        with self.opener() as source:
            while chunk := source.read(CHUNK_SIZE):
                self.cancellation.check()
                self.on_bytes(len(chunk))
                yield chunk


class RemoteBlobReader:
    """A registry blob as a readable stream that survives cut connections.

    A body error re-requests from the current offset with `Range`; a server that ignores
    Range sends the blob from the start again and the bytes already handed out are skipped.
    """

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        what: str,
        max_resumes: int = 5,
        on_bytes: Callable[[int], None] | None = None,
        skip_mirrors: frozenset[str] = frozenset(),
        extensions: Mapping[str, object] | None = None,
        cancellation: Cancellation | None = None,
    ) -> None:
        self.http, self.url, self.what, self.max_resumes = http, url, what, max_resumes
        self.cancellation = cancellation or Cancellation()  # the run's: stops the download
        self.extensions = dict(extensions or {})  # what the chain needs, e.g. a signer's
        self.on_bytes = on_bytes
        self.skip_mirrors = skip_mirrors
        self.served_by: str | None = None  # the mirror that sent the body, if one did
        self.offset = 0
        self._resumes = 0
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] = iter(())
        self._buffer = b""
        self._position = 0
        self._eof = False

    def _get(self, offset: int) -> httpx.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = self.http.build_request(
            "GET",
            self.url,
            headers=headers,
            extensions={**self.extensions, SKIP_MIRRORS: self.skip_mirrors},
        )
        response = self.http.send(request, stream=True)
        self.served_by = response.extensions.get(SERVED_BY)
        return response

    def _connect(self) -> None:
        """(Re)open the body at `offset`: a 206 that continues there, or the whole blob
        again (a server that ignores Range, or answers it at the wrong place) with the bytes
        already handed out skipped."""
        self.cancellation.check()
        response = self._get(self.offset)
        resumed = self.offset and response.status_code == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(
            f"bytes {self.offset}-"
        ):
            LOG.info("%s: resumed at the wrong offset; fetching it whole", self.what)
            response.close()
            response, resumed = self._get(0), False
        self._response = response
        self.cancellation.watch(response)
        if not resumed and response.status_code != 200:
            raise registry_error(response, self.what)
        skip = 0 if resumed else self.offset
        self._chunks = self._paced_chunks(response)
        while skip:
            chunk = next(self._chunks, b"")
            if not chunk:
                raise RegistryError(f"{self.what}: the blob ended early on a restarted download")
            self._buffer, self._position = chunk, min(skip, len(chunk))
            skip -= self._position

    def read(self, size: int = -1) -> bytes:
        while self._position >= len(self._buffer) and not self._eof:
            try:
                if self._response is None:
                    self._connect()
                    if self._position < len(self._buffer):
                        continue  # a restarted download already holds the next bytes
                self._buffer, self._position = next(self._chunks, b""), 0
                self._eof = not self._buffer
                if self.on_bytes is not None:
                    self.on_bytes(len(self._buffer))
            except BODY_ERRORS as exc:
                self._close_response()
                self.cancellation.check()  # the interrupt itself cut the connection: do not resume
                self._resumes += 1
                if self._resumes > self.max_resumes:
                    raise RegistryError(
                        f"{self.what}: the connection kept failing mid-download"
                        f" ({self._resumes - 1} resumes, last: {type(exc).__name__}: {exc});"
                        " try again"
                    ) from None
                LOG.info("%s: connection cut at %d bytes, resuming", self.what, self.offset)
        # Slice only what is asked for: re-slicing the rest of a 1 MiB chunk on every small
        # read would copy it over and over.
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._position + size)
        data = self._buffer[self._position : end]
        self._position = end
        self.offset += len(data)
        return data

    def _paced_chunks(self, response: httpx.Response) -> Iterator[bytes]:
        """The raw body in CHUNK_SIZE pieces, checking the pace as every network read arrives: a
        body moving under MIN_LAYER_SPEED over a whole --timeout window (a trickle the read
        timeout never sees) counts as stalled and resumes.

        Bytes gathered here but not yet handed out are simply fetched again on a resume, since
        only `read()` advances the offset.
        """
        window = self.http.timeout.read
        pending: list[bytes] = []  # joined once per chunk (a piece as large is passed as it is)
        pending_size = 0
        window_start, moved = time.monotonic(), 0
        for piece in response.iter_raw():
            pending.append(piece)
            pending_size += len(piece)
            moved += len(piece)
            if window and time.monotonic() - window_start >= window:
                if moved < MIN_LAYER_SPEED * window:
                    raise httpx.ReadTimeout(
                        f"under {MIN_LAYER_SPEED} bytes/s for {window:g} s",
                        request=response.request,
                    )
                window_start, moved = time.monotonic(), 0
            if pending_size >= CHUNK_SIZE:
                yield b"".join(pending)
                pending.clear()
                pending_size = 0
        if pending:
            yield b"".join(pending)

    def _close_response(self) -> None:
        if self._response is not None:
            self.cancellation.unwatch(self._response)
            self._response.close()
        self._response = None

    def close(self) -> None:
        self._close_response()
