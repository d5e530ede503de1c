"""The innermost transport: real sockets, HTTP/2, TLS per host and environment proxies.

httpx stops reading HTTPS_PROXY / HTTP_PROXY / NO_PROXY once a client is given a transport, so
the proxy choice is made here, per request.
"""

import importlib
import ipaddress
import logging
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import httpcore
import httpx

from occystrap.cancel import Cancellation
from occystrap.errors import OccystrapError, UsageError, find_cause
from occystrap.middleware.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFERRED_HTTP2_MODULE,
)
from occystrap.middleware.tls import (
    TlsPolicy,
    default_certs_roots,
    host_cert_dirs,
    make_ssl_context,
)

logger = logging.getLogger(__name__)

# Waiting for a free pooled connection is our own queueing, not the server's silence.
_POOL_TIMEOUT = 120.0


def make_timeout(
    read: float = DEFAULT_READ_TIMEOUT, connect: float = DEFAULT_CONNECT_TIMEOUT
) -> httpx.Timeout:
    """The per-operation timeouts of every request (--timeout, --connect-timeout)."""
    return httpx.Timeout(connect=connect, read=read, write=read, pool=max(_POOL_TIMEOUT, read))


DEFAULT_TIMEOUT = make_timeout()

_DEFAULT_PORTS = {"http": 80, "https": 443}

# What one socket read of a response may take. httpcore asks for 64 KiB, and every read costs a
# poll, a recv and a pass through h11 and httpx's streams in Python: a blob copied between two
# loopback registries spent about a tenth of our CPU on that (docs/performance.md).
READ_BYTES = 1024 * 1024


class _LargeReadStream(httpcore.NetworkStream):
    """A connection whose reads take up to READ_BYTES, whatever httpcore asks for."""

    def __init__(self, inner: httpcore.NetworkStream, tls: bool = False) -> None:
        self._inner = inner
        self._tls = tls

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wanted = max(max_bytes, READ_BYTES)
        data = self._inner.read(wanted, timeout)
        if not self._tls:
            return data
        # TLS hands out one record (16 KiB at most) per read: the records that have arrived
        # already are taken too, so h11 and httpx see one piece instead of up to 64.
        pieces, size = [data], len(data)
        while data and size < wanted and self._inner.get_extra_info("is_readable"):
            data = self._inner.read(wanted - size, timeout)
            pieces.append(data)
            size += len(data)
        return b"".join(pieces)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), tls=True
        )

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _LargeReads(httpcore.NetworkBackend):
    """httpcore's network backend, its connections reading in READ_BYTES steps."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _env(environ: Mapping[str, str], name: str) -> str:
    """A proxy variable, the lowercase spelling winning as in curl and urllib."""
    return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """Split a NO_PROXY entry into host and optional port (`[v6]:port`, `host:port`, bare v6)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _no_proxy_matches(entry: str, host: str, port: int | None) -> bool:
    """Whether one NO_PROXY entry covers `host:port`: domain suffix, exact IP or CIDR."""
    if entry == "*":
        return True
    entry_host, entry_port = _split_host_port(entry)
    if entry_port is not None and entry_port != port:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(entry_host, strict=False)
        except ValueError:
            return False
    domain = entry_host.lower().removeprefix("*").lstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def proxy_for(url: httpx.URL | str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL to use for `url` according to the environment, or None to go direct."""
    url = httpx.URL(url)
    host = _strip_brackets(url.host.lower())
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    no_proxy = _env(environ, "no_proxy").replace(" ", ",").split(",")
    if any(entry and _no_proxy_matches(entry.strip(), host, port) for entry in no_proxy):
        return None
    proxy = _env(environ, f"{url.scheme}_proxy") or _env(environ, "all_proxy")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _any_proxy_configured(environ: Mapping[str, str]) -> bool:
    return any(_env(environ, f"{scheme}_proxy") for scheme in ("http", "https", "all"))


class UntrustedCertificateError(httpx.ConnectError, OccystrapError):
    """TLS verification failed: the fix is trusting the right CA, so the message says how.

    Still a ConnectError, so a mirror with a bad certificate falls through to the origin.
    """


class HostNotFoundError(httpx.ConnectError, OccystrapError):
    """The host name does not resolve: retrying will not help, the user must act.

    Still a ConnectError, so a mirror whose name does not resolve falls through to the origin.
    """


def is_bulk_transfer(request: httpx.Request) -> bool:
    """Whether `request` moves a blob body: a blob GET, or a PUT/PATCH into an upload session."""
    path = request.url.path
    if request.method == "GET":
        return "/blobs/" in path and "/blobs/uploads/" not in path
    return request.method in ("PUT", "PATCH") and "/blobs/uploads/" in path


_http2_lock = threading.Lock()


def _let_http2_load() -> None:
    """Import httpcore's HTTP/2 connection if the occystrap program left it out (a None entry,
    see cli.py) so that a TLS connection negotiating h2 finds it; once, for every thread."""
    if sys.modules.get(DEFERRED_HTTP2_MODULE, False) is not None:
        return
    with _http2_lock:
        if sys.modules.get(DEFERRED_HTTP2_MODULE, False) is None:
            del sys.modules[DEFERRED_HTTP2_MODULE]
            importlib.import_module(DEFERRED_HTTP2_MODULE)


class _TimedTransport(httpx.HTTPTransport):
    """An HTTPTransport that gives requests built without a client a finite timeout.

    Requests that middlewares build themselves (token fetches, mirror attempts) carry no timeout
    extension unless copied; httpcore would then wait forever.

    With HTTP/2 on, blob bodies go through a second, HTTP/1.1 pool (`bulk`): httpcore's h2 is
    pure Python, so one multiplexed connection caps throughput, and two uploads sharing it can
    stall on flow control (measured in docs/performance.md). API calls keep HTTP/2.
    """

    def __init__(
        self,
        *,
        default_timeout: httpx.Timeout,
        bulk: httpx.BaseTransport | None,
        cancellation: Cancellation | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._http2 = bool(kwargs.get("http2"))
        # httpx takes no network backend, so its pool (direct or through a proxy) gets ours here.
        self._pool._network_backend = _LargeReads(self._pool._network_backend)
        self._default_timeout = default_timeout.as_dict()
        self._bulk = bulk
        self._cancellation = cancellation

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions.setdefault("timeout", self._default_timeout)
        if self._http2 and request.url.scheme == "https":
            _let_http2_load()
        try:
            if self._bulk is not None and is_bulk_transfer(request):
                return self._bulk.handle_request(request)
            if self._cancellation is None:
                return super().handle_request(request)
            return self._cut_on_cancel(request, self._cancellation)
        except (HostNotFoundError, UntrustedCertificateError):
            raise  # said already, by the bulk pool's own transport
        except httpx.ConnectError as exc:
            if find_cause(exc, socket.gaierror) is not None:
                raise HostNotFoundError(
                    f"cannot resolve the host name {request.url.host}: check its spelling;"
                    " offline, or does this network need a proxy (HTTPS_PROXY)?",
                    request=request,
                ) from exc
            if not find_cause(exc, ssl.SSLCertVerificationError) is not None:
                raise
            raise UntrustedCertificateError(
                f"the TLS certificate of {request.url.netloc.decode('ascii')} is not trusted:"
                f" {exc}; give its CA with --ca-cert FILE or as"
                f" /etc/containers/certs.d/{request.url.netloc.decode('ascii')}/ca.crt",
                request=request,
            ) from exc

    def _cut_on_cancel(self, request: httpx.Request, cancellation: Cancellation) -> httpx.Response:
        """Send `request` with the connections it opens known to the run's `cancellation`."""
        inner = request.extensions.get("trace")
        request.extensions["trace"] = cancellation.connection_trace(inner)
        try:
            return super().handle_request(request)
        finally:
            if inner is None:
                del request.extensions["trace"]
            else:
                request.extensions["trace"] = inner

    def close(self) -> None:
        if self._bulk is not None:
            self._bulk.close()
        super().close()


class TransportRouter(httpx.BaseTransport):
    """Send each request direct or through the proxy the environment names for its URL, with
    the TLS context of its host's certs.d directory: one pool per (proxy, directory,
    verification) in use.

    A host registries.conf calls insecure is spoken to as podman does: TLS without verifying
    its certificate, and plain HTTP if it does not speak TLS at all (remembered for the run).
    """

    def __init__(
        self,
        direct: httpx.BaseTransport,
        environ: Mapping[str, str],
        tls: TlsPolicy,
        make: Callable[[str | None, ssl.SSLContext | None], httpx.BaseTransport],
        insecure_host: Callable[[str], bool] = lambda _netloc: False,
    ) -> None:
        self._direct = direct
        self._environ = dict(environ)
        self._tls = tls
        self._make = make
        self._insecure_host = insecure_host
        self._routes: dict[tuple[str | None, Path | None, bool], httpx.BaseTransport] = {}
        self._plain_http: set[str] = set()  # insecure hosts found not to speak TLS
        self._lock = threading.Lock()

    def _transport_for(self, url: httpx.URL) -> httpx.BaseTransport:
        proxy = proxy_for(url, self._environ)
        directory, unverified = None, False
        if url.scheme == "https":
            netloc = url.netloc.decode("ascii")
            directory = self._tls.directory_for(netloc)
            unverified = self._tls.verify and self._insecure_host(netloc)
        if proxy is None and directory is None and not unverified:
            return self._direct
        key = (proxy, directory, unverified)
        with self._lock:
            if key not in self._routes:
                self._routes[key] = self._new_route(url, proxy, directory, unverified)
            return self._routes[key]

    def _new_route(
        self, url: httpx.URL, proxy: str | None, directory: Path | None, unverified: bool
    ) -> httpx.BaseTransport:
        context = None
        if directory is not None or unverified:
            context = make_ssl_context(
                self._tls.ca_cert, self._tls.verify and not unverified, directory
            )
            logger.debug("TLS for %s from %s", url.netloc.decode("ascii"), directory)
        try:
            return self._make(proxy, context)
        except (ValueError, ImportError) as exc:  # httpx.InvalidURL is a ValueError
            raise UsageError(
                f"cannot use the {url.scheme} proxy set in the environment: {exc}; "
                "fix HTTPS_PROXY / HTTP_PROXY / ALL_PROXY"
            ) from exc

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        netloc = request.url.netloc.decode("ascii")
        if request.url.scheme != "https" or not self._insecure_host(netloc):
            return self._transport_for(request.url).handle_request(request)
        if netloc not in self._plain_http:
            try:
                return self._transport_for(request.url).handle_request(request)
            except httpx.ConnectError as exc:
                if find_cause(exc, ssl.SSLError) is None:
                    raise
                logger.info("%s does not speak TLS; plain HTTP, as it is insecure", netloc)
                with self._lock:
                    self._plain_http.add(netloc)
        request.url = request.url.copy_with(scheme="http")
        return self._transport_for(request.url).handle_request(request)

    def close(self) -> None:
        self._direct.close()
        with self._lock:
            for transport in self._routes.values():
                transport.close()
            self._routes.clear()


def _warn_verification_off() -> None:
    """Said once per process: every client built after the first shares the same setting."""
    global _verification_off_warned
    if not _verification_off_warned:
        _verification_off_warned = True
        logger.warning(
            "TLS certificate verification is off (--tls-verify=false): anyone on the network"
            " path can impersonate the registries"
        )


_verification_off_warned = False


def build_base_transport(
    *,
    http2: bool = True,
    parallel: int = 4,
    ca_cert: str | None = None,
    tls_verify: bool = True,
    certs_roots: Sequence[Path] | None = None,
    environ: Mapping[str, str] = os.environ,
    timeout: httpx.Timeout | None = None,
    insecure_host: Callable[[str], bool] | None = None,
    host_dirs: Mapping[str, Path] | None = None,
    cancellation: Cancellation | None = None,
) -> httpx.BaseTransport:
    """The transport at the bottom of the middleware chain, sized for `parallel` workers.

    Cancelling `cancellation` (the run's) shuts down every connection it opened.

    `certs_roots`: where HOST[:PORT] certificate directories are looked up (default:
    `default_certs_roots`, which $OCCYSTRAP_CERTS_DIRS overrides); `host_dirs` names one
    host's directory outright (a copy end's --src-cert-dir/--dest-cert-dir) and wins.
    `insecure_host` tells which HOST[:PORT] may be spoken to without verified TLS
    (registries.conf's insecure).
    """
    connections = max(10, 4 * parallel)
    roots = certs_roots if certs_roots is not None else default_certs_roots(environ)
    tls = TlsPolicy(ca_cert, tls_verify, {**host_cert_dirs(roots), **(host_dirs or {})})
    default_context = make_ssl_context(ca_cert, tls_verify)
    if not tls_verify:
        _warn_verification_off()

    def make(
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        use_http2: bool = http2,
    ) -> httpx.HTTPTransport:
        return _TimedTransport(
            default_timeout=timeout or DEFAULT_TIMEOUT,
            bulk=make(proxy, ssl_context, use_http2=False) if use_http2 else None,
            cancellation=cancellation,
            http2=use_http2,
            verify=ssl_context or default_context,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            retries=0,
            proxy=proxy,
        )

    direct = make()
    if not _any_proxy_configured(environ) and not tls.host_dirs and insecure_host is None:
        return direct
    return TransportRouter(direct, environ, tls, make, insecure_host or (lambda _netloc: False))
