"""A programmable reverse proxy that puts realistic network faults in front of a real registry.

Tests use it to prove retry, resume and redirect handling against real server behaviour: the
proxy passes everything through (streaming, a chunk at a time) except what a test asked to break.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNK_SIZE = 64 * 1024
BLOB_PATH = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}
HANG_UP = -1  # a fault's status meaning: close the connection without answering


@dataclass(frozen=True)
class RecordedRequest:
    """What a client sent; header names are lower-cased for easy assertions."""

    method: str
    path: str
    headers: dict[str, str]
    action: str  # "forwarded", "failed", "redirected", or the body fault's name ("cut", ...)
    # When the request line arrived (time.monotonic), for rate and Retry-After checks.
    at: float = field(default_factory=time.monotonic)


@dataclass
class BodyFault:
    """How to spoil a forwarded response body: the status line and headers stay real.

    `cut_bytes`: hang up after that many body bytes. `stall_seconds`: after `cut_bytes` bytes
    (0 if unset), go silent that long, then hang up. `trickle_seconds`: send the body a byte at
    a time, this far apart. `extra_bytes`: append that much garbage past the real body (sent
    chunked, with no Content-Length). `flip_byte`: invert the body byte at that offset.
    `content_range`: replace the Content-Range header of a 206. `chunk_seconds`: send the
    body CHUNK_SIZE bytes at a time, this far apart (a slow link, not a broken one).
    """

    name: str
    cut_bytes: int | None = None
    stall_seconds: float = 0.0
    trickle_seconds: float = 0.0
    extra_bytes: int = 0
    flip_byte: int | None = None
    content_range: str | None = None
    chunk_seconds: float = 0.0


@dataclass
class _Fault:
    pattern: re.Pattern
    method: str | None
    remaining: int
    status: int = 0
    retry_after: str | None = None
    body: BodyFault | None = None
    answer: bytes | None = None  # a whole answer sent instead of forwarding
    headers: dict[str, str] = field(default_factory=dict)  # the answer's own headers

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and self.pattern.search(path) is not None
        )


@dataclass
class _Quota:
    path: re.Pattern[str]
    method: str
    limit: int
    window: int
    remaining: int


class _QuietHTTPServer(ThreadingHTTPServer):
    """Clients hanging up mid-response is normal in fault tests, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class ForwardingServer:
    """A threaded loopback HTTP/1.1 server that forwards to `upstream_url` and records requests.

    `upstream_headers` replace same-named client headers on the way upstream: the server's own
    access to the upstream (a CDN's credentials), independent of what the client sent.
    """

    def __init__(
        self,
        upstream_url: str,
        upstream_ssl: ssl.SSLContext | None = None,
        upstream_headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        self._upstream_https = parts.scheme == "https"
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if self._upstream_https else 80)
        self._upstream_ssl = upstream_ssl
        self.upstream_headers = dict(upstream_headers or {})
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self.scheme = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_matching(
        self, path_regex: str, method: str | None = None
    ) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if pattern.search(r.path) and (method is None or r.method == method)
        ]

    @property
    def range_headers(self) -> list[str]:
        """Every Range header clients sent, in order."""
        return [r.headers["range"] for r in self.requests if "range" in r.headers]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def start(self):
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), _make_handler(self))
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            # Wakes handler threads blocked on idle keep-alive connections.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _record(self, handler: BaseHTTPRequestHandler, action: str) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, handler.path, headers, action))

    def upstream_connection(self) -> http.client.HTTPConnection:
        if self._upstream_https:
            return http.client.HTTPSConnection(
                self._upstream_host, self._upstream_port, context=self._upstream_ssl, timeout=60
            )
        return http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=60)

    def handle(self, handler: _Handler) -> None:
        """Decide what to do with one request; subclasses add faults before forwarding."""
        self._record(handler, "forwarded")
        handler.forward()


class FaultProxy(ForwardingServer):
    """A `ForwardingServer` whose tests can program failures, truncations and redirects."""

    def __init__(
        self,
        upstream_url: str,
        upstream_ssl: ssl.SSLContext | None = None,
        upstream_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(upstream_url, upstream_ssl, upstream_headers)
        self._faults: list[_Fault] = []
        self._redirect_target: ForwardingServer | None = None
        self._quota: _Quota | None = None
        self._chunks_only = False

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: str | None = None,
        path: str = ".*",
        method: str | None = None,
    ) -> None:
        """Answer the next `n` matching requests with `status` (plus Retry-After if given)."""
        fault = _Fault(re.compile(path), method, n, status=status, retry_after=retry_after)
        with self._lock:
            self._faults.append(fault)

    def answer_next(
        self,
        n: int,
        body: bytes,
        path: str = ".*",
        method: str | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `n` matching requests with `status`, `headers` and `body` (an OCI
        manifest, unless `headers` say otherwise) instead of forwarding them."""
        fault = _Fault(
            re.compile(path), method, n, status=status, answer=body, headers=dict(headers or {})
        )
        with self._lock:
            self._faults.append(fault)

    def hang_up_next(self, n: int, path: str = ".*", method: str | None = None) -> None:
        """Read the next `n` matching requests, then close the connection with no answer."""
        self.fail_next(n, status=HANG_UP, path=path, method=method)

    def cut_after(self, path_regex: str, nbytes: int, times: int = 1, method: str = "GET") -> None:
        """For `times` matching requests send headers and `nbytes` of body, then hang up."""
        self.spoil_body(path_regex, BodyFault("cut", cut_bytes=nbytes), times, method)

    def spoil_body(
        self, path_regex: str, body: BodyFault, times: int = 1, method: str = "GET"
    ) -> None:
        """Forward the next `times` matching requests, spoiling their response body as `body`
        says; the request is recorded with `body.name` as its action."""
        fault = _Fault(re.compile(path_regex), method, times, body=body)
        with self._lock:
            self._faults.append(fault)

    def redirect_blobs_to(self, target: ForwardingServer | None) -> None:
        """Answer blob GET/HEAD with 307 to `target` (None turns redirects off)."""
        with self._lock:
            self._redirect_target = target

    def refuse_monolithic_uploads(self, refuse: bool = True) -> None:
        """Answer 405 to every upload PUT that carries the blob, as registries that take
        only chunked (PATCH) uploads do; the closing PUT of a chunked upload is empty."""
        with self._lock:
            self._chunks_only = refuse

    def count_down_quota(
        self, limit: int, window: int = 21600, path: str = r"/manifests/", method: str = "GET"
    ) -> None:
        """Act as Docker Hub does: every answer states `RateLimit-Limit: LIMIT;w=WINDOW` and
        `RateLimit-Remaining`; each matching request spends a pull, and with none left a
        matching request is answered 429 (recorded as "rate-limited")."""
        with self._lock:
            self._quota = _Quota(re.compile(path), method, limit, window, limit)

    def reset(self) -> None:
        """Forget recorded requests and every programmed fault."""
        with self._lock:
            self._faults.clear()
            self._redirect_target = None
            self._quota = None
            self._chunks_only = False
        super().reset()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    def _spend_quota(self, handler: _Handler) -> bool:
        """Charge a pull to the quota (if one is set); False when none is left."""
        with self._lock:
            quota = self._quota
            if quota is None:
                return True
            spends = quota.path.search(handler.path) and handler.command == quota.method
            allowed = not spends or quota.remaining > 0
            if spends and allowed:
                quota.remaining -= 1
            handler.extra_headers = {
                "RateLimit-Limit": f"{quota.limit};w={quota.window}",
                "RateLimit-Remaining": f"{quota.remaining};w={quota.window}",
            }
            return allowed

    def handle(self, handler: _Handler) -> None:
        if not self._spend_quota(handler):
            self._record(handler, "rate-limited")
            handler.send_fault(429, None)
            return
        fault = self._take_fault(handler.command, handler.path)
        with self._lock:
            redirect_target, chunks_only = self._redirect_target, self._chunks_only
        if (
            chunks_only
            and handler.command == "PUT"
            and "/blobs/uploads/" in handler.path
            and handler.carries_body()
        ):
            self._record(handler, "refused")
            handler.send_fault(405, None)
        elif fault is not None and fault.answer is not None:
            self._record(handler, "answered")
            handler.send_answer(fault.status, fault.answer, fault.headers)
        elif fault is not None and fault.status == HANG_UP:
            self._record(handler, "hung up")
            handler.hang_up()
        elif fault is not None and fault.body is None:
            self._record(handler, "failed")
            handler.send_fault(fault.status, fault.retry_after)
        elif fault is not None:
            self._record(handler, fault.body.name)
            handler.forward(fault.body)
        elif (
            redirect_target is not None
            and handler.command in ("GET", "HEAD")
            and BLOB_PATH.search(handler.path)
        ):
            self._record(handler, "redirected")
            # A query string like a signed storage URL, which clients must keep verbatim.
            handler.send_redirect(f"{redirect_target.url}{handler.path}?signature=test-signed-url")
        else:
            super().handle(handler)


class BlobHost(ForwardingServer):
    """Stands in for blob storage behind a redirect: serves blobs only, recording every header."""

    def handle(self, handler: _Handler) -> None:
        if handler.command in ("GET", "HEAD") and BLOB_PATH.search(handler.path):
            super().handle(handler)
        else:
            self._record(handler, "failed")
            handler.send_fault(404, None)


class CountingListener:
    """A TCP port that accepts connections and closes them at once, counting accepts: a mirror
    that is reachable but dead, whose every use the test can see."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._accepts = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    @property
    def accepts(self) -> int:
        with self._lock:
            return self._accepts

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                self._accepts += 1
            connection.close()

    def __enter__(self) -> CountingListener:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    owner: ForwardingServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - base class name
        """Silence per-request stderr lines; tests read `owner.requests` instead."""

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, True)

    def finish(self) -> None:
        self.owner._track(self.connection, False)
        super().finish()

    def do_request(self) -> None:
        # Headers the proxy adds to this answer (a stated quota), whatever it relays.
        self.extra_headers: dict[str, str] = {}
        self.owner.handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_request

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives, un-chunked, never more than CHUNK_SIZE at once."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, CHUNK_SIZE))
                    if not chunk:
                        raise ConnectionError("client closed mid-chunk")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            chunk = self.rfile.read(min(remaining, CHUNK_SIZE))
            if not chunk:
                raise ConnectionError("client closed mid-body")
            remaining -= len(chunk)
            yield chunk

    def _has_body(self) -> bool:
        return "Content-Length" in self.headers or "Transfer-Encoding" in self.headers

    def carries_body(self) -> bool:
        """Whether the request sends any body bytes (an empty Content-Length does not)."""
        return (
            "Transfer-Encoding" in self.headers or int(self.headers.get("Content-Length") or 0) > 0
        )

    def send_fault(self, status: int, retry_after: str | None) -> None:
        for _ in self._body_chunks():
            pass  # drain so the connection stays usable
        code = ERROR_CODES.get(status, "UNKNOWN")
        payload = f'{{"errors":[{{"code":"{code}","message":"injected fault"}}]}}'.encode()
        self.send_response(status)
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_answer(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        for _ in self._body_chunks():
            pass
        self.send_response(status)
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def hang_up(self) -> None:
        for _ in self._body_chunks():
            pass
        self.close_connection = True  # finish() closes the socket: no status line at all

    def send_redirect(self, location: str) -> None:
        for _ in self._body_chunks():
            pass
        self.send_response(307)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def forward(self, fault: BodyFault | None = None) -> None:
        """Relay to the upstream, streaming both ways; spoil the response body as `fault` says."""
        replaced = HOP_BY_HOP | {name.lower() for name in self.owner.upstream_headers}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in replaced}
        headers.update(self.owner.upstream_headers)
        upstream = self.owner.upstream_connection()
        try:
            body = self._body_chunks() if self._has_body() else None
            # http.client re-chunks an iterable body unless a Content-Length was given.
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self._relay_response(response, fault or BodyFault("forwarded"))
        finally:
            upstream.close()

    def _relay_response(self, response: http.client.HTTPResponse, fault: BodyFault) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lowered = name.lower()
            if lowered in HOP_BY_HOP or (fault.extra_bytes and lowered == "content-length"):
                continue
            if lowered == "content-range" and fault.content_range is not None:
                value = fault.content_range
            self.send_header(name, value)
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        has_length = response.getheader("Content-Length") is not None and not fault.extra_bytes
        bodyless = self.command == "HEAD" or response.status in (204, 304)
        rechunk = not has_length and not bodyless
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodyless:
            return

        def send(chunk: bytes) -> None:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if rechunk else chunk)

        hangs_up = fault.cut_bytes is not None or fault.stall_seconds > 0
        budget = fault.cut_bytes if fault.cut_bytes is not None else (0 if hangs_up else None)
        sent = 0
        step = 1 if fault.trickle_seconds else CHUNK_SIZE
        while budget != 0 and (
            chunk := response.read(step if budget is None else min(step, budget))
        ):
            if fault.flip_byte is not None and sent <= fault.flip_byte < sent + len(chunk):
                at = fault.flip_byte - sent
                chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1 :]
            send(chunk)
            sent += len(chunk)
            if fault.trickle_seconds or fault.chunk_seconds:
                self.wfile.flush()
                time.sleep(fault.trickle_seconds or fault.chunk_seconds)
            if budget is not None:
                budget -= len(chunk)
        if hangs_up:
            self.wfile.flush()
            time.sleep(fault.stall_seconds)
            self.close_connection = True  # finish() then closes the socket mid-body
            return
        if fault.extra_bytes:
            send(b"\0" * fault.extra_bytes)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")


def _make_handler(owner: ForwardingServer) -> type[_Handler]:
    return type("BoundHandler", (_Handler,), {"owner": owner})
