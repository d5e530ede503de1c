"""docker://NAME[:TAG][?socket=PATH]: an image in a Docker (or Podman) daemon, over its socket.

The daemon is a local Unix socket, so it has its own small client (the Logging middleware
over an `httpx.HTTPTransport(uds=...)`): no registry auth, mirrors, retries or rate limits
apply. The socket is `?socket=`, else `DOCKER_HOST` (`unix://PATH`), else Docker's default,
else Podman's (root's, then the user's).

Reading inspects the image, then streams `GET /images/NAME/get` (a docker-save tarball,
classic or OCI layout). That stream names its image only at its end (`manifest.json` comes
after the layers), so it is spooled first: small members in memory, layers to files in the
run's work directory as they pass. Writing streams a docker-save tarball, built as layers
arrive, into `POST /images/load` through a pipe, then checks that the daemon lists the image
under NAME:TAG with the same layers.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from occystrap import cancel, compression
from occystrap.archive import SpooledTarMembers, name_and_tag
from occystrap.dockersave import (
    DockerSaveReader,
    write_docker_save,
)
from occystrap.endpoints import (
    Endpoint,
    Scheme,
    non_empty_option,
    query_options,
    split_query,
)
from occystrap.errors import OccystrapError, UsageError, find_cause
from occystrap.image import Image, ImageLike
from occystrap.jsondoc import parse_json
from occystrap.limits import ERROR_BODY_LIMIT
from occystrap.middleware.builder import USER_AGENT
from occystrap.middleware.logging import Logging
from occystrap.pipeline import RunContext, local_layers

LOG = logging.getLogger("occystrap.docker")

DOCKER_SOCKET = Path("/var/run/docker.sock")
PODMAN_ROOT_SOCKET = Path("/run/podman/podman.sock")
FORM = "docker://NAME[:TAG][?socket=PATH]"
# The daemon answers a load only once it has read the whole tarball and registers layers
# meanwhile, so reads may wait long; connecting to a local socket must not.
DAEMON_TIMEOUT = httpx.Timeout(connect=15.0, read=600.0, write=600.0, pool=60.0)
PING_TIMEOUT = 15.0  # a daemon that cannot answer this is not worth waiting for
_REGISTRY_HINT = "an image in a registry is registry://HOST/NAME[:TAG]"
_HOW_TO_NAME = "name its socket with ?socket=PATH or DOCKER_HOST=unix://PATH"


@dataclass(frozen=True)
class DaemonSocket:
    path: Path
    origin: str  # where the path came from, for messages: "?socket=", "DOCKER_HOST", ...

    def __str__(self) -> str:
        return str(self.path)


def default_sockets(environ: Mapping[str, str]) -> list[Path]:
    """Where daemons listen by default: Docker's, then Podman's for root and for the user."""
    sockets = [DOCKER_SOCKET, PODMAN_ROOT_SOCKET]
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(Path(runtime_dir) / "podman" / "podman.sock")
    return sockets


def find_socket(
    option: str | None, environ: Mapping[str, str], defaults: list[Path] | None = None
) -> DaemonSocket:
    """The socket to use: `?socket=`, else DOCKER_HOST, else the first of `defaults` (those
    of `default_sockets`) that exists."""
    if option:
        return DaemonSocket(Path(option), "?socket=")
    docker_host = environ.get("DOCKER_HOST", "").strip()
    if docker_host:
        scheme, separator, path = docker_host.partition("://")
        if scheme != "unix" or not separator or not path:
            raise UsageError(
                f"DOCKER_HOST={docker_host!r} is not a Unix socket: occystrap talks to daemons"
                " over their Unix socket only; set DOCKER_HOST=unix://PATH or use ?socket=PATH"
            )
        return DaemonSocket(Path(path), "DOCKER_HOST")
    candidates = default_sockets(environ) if defaults is None else defaults
    for candidate in candidates:
        if candidate.exists():
            return DaemonSocket(candidate, "the default")
    raise OccystrapError(
        f"no Docker or Podman socket found (tried {', '.join(map(str, candidates))}): start"
        f" the daemon (or `podman system service`), or {_HOW_TO_NAME}; {_REGISTRY_HINT}"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Daemon:
    """A Docker Engine API daemon behind a Unix socket; every failure is a one-line error."""

    def __init__(self, socket: DaemonSocket) -> None:
        self.socket = socket

    def _where(self) -> str:
        origin = "" if self.socket.origin == "the default" else f" (from {self.socket.origin})"
        return f"{self.socket}{origin}"

    def _transport_error(self, error: httpx.TransportError) -> OccystrapError:
        cause = find_cause(error, OSError)
        code = cause.errno if cause is not None else None
        if code == errno.ENOENT:
            return OccystrapError(
                f"no daemon socket at {self._where()}: start Docker (or `podman system"
                f" service`), or {_HOW_TO_NAME}"
            )
        if code in (errno.EACCES, errno.EPERM):
            return OccystrapError(
                f"permission denied on the daemon socket {self._where()}: run as root or as a"
                " member of the socket's group (docker), or name a socket you may use"
            )
        if code in (errno.ECONNREFUSED, errno.ENOTSOCK):
            return OccystrapError(
                f"nothing answers on {self._where()}: the daemon is not running there; start"
                f" it, or {_HOW_TO_NAME}"
            )
        if isinstance(error, httpx.TimeoutException):
            return OccystrapError(
                f"the daemon at {self._where()} did not answer in time"
                f" ({type(error).__name__}); check that it is healthy and try again"
            )
        if isinstance(error, httpx.ProtocolError):
            return self._not_docker(f"it does not answer HTTP: {type(error).__name__}")
        return OccystrapError(
            f"lost the daemon at {self._where()}: {_one_line(str(error)) or type(error).__name__};"
            " check that it is running and try again"
        )

    def _not_docker(self, why: str) -> OccystrapError:
        return OccystrapError(
            f"{self._where()} is not a Docker Engine API socket ({why}): point ?socket= or"
            " DOCKER_HOST at Docker's or Podman's API socket"
        )

    def error(self, response: httpx.Response, doing: str) -> OccystrapError:
        """The daemon's refusal, with its JSON `message` (read from a streamed response too)."""
        body = b""
        for chunk in response.iter_bytes():  # unlike iter_raw, also after a whole read
            body += chunk
            if len(body) > ERROR_BODY_LIMIT:
                break
        try:
            message = parse_json(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if not isinstance(message, str):
            message = body[:300].decode(errors="replace") or f"HTTP {response.status_code}"
        return OccystrapError(
            f"the daemon at {self.socket} failed to {doing}: {_one_line(message)}"
        )

    @contextmanager
    def session(self) -> Iterator[httpx.Client]:
        """A client on the socket, its API checked; transport failures become one-line errors."""
        # A Unix socket: no TLS context (httpx would load certifi's for nothing) and no
        # environment proxies.
        transport = Logging(httpx.HTTPTransport(uds=str(self.socket.path), verify=False))
        client = httpx.Client(
            transport=transport,
            base_url="http://docker",
            headers={"User-Agent": USER_AGENT},
            timeout=DAEMON_TIMEOUT,
            trust_env=False,
        )
        try:
            with client:
                self._check(client)
                yield client
        except httpx.TransportError as error:
            raise self._transport_error(error) from None

    def _check(self, client: httpx.Client) -> None:
        response = client.get("/_ping", timeout=PING_TIMEOUT)
        version = response.headers.get("Api-Version")
        if response.status_code != 200 or not version:
            raise self._not_docker(
                f"/_ping answered HTTP {response.status_code}"
                + ("" if version else " without an Api-Version header")
            )
        LOG.debug(
            "daemon at %s: %s, API %s",
            self.socket,
            response.headers.get("Server", "unknown server"),
            version,
        )

    def inspect(self, client: httpx.Client, name: str) -> dict[str, Any] | None:
        """`GET /images/NAME/json`: the image's description, None when there is no such image."""
        response = client.get(f"/images/{name}/json")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.error(response, f"describe {name}")
        try:
            document = parse_json(response.content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise self._not_docker(f"/images/{name}/json is not a JSON object")
        return document


@dataclass
class DockerURI(Endpoint):
    name: str  # NAME:TAG, the tag made explicit
    socket: str | None = None

    def daemon(self) -> Daemon:
        return Daemon(find_socket(self.socket, os.environ))

    def open_input(self, ctx: RunContext) -> DockerSource:
        daemon = self.daemon()
        with daemon.session():
            pass  # a wrong socket fails before anything else is opened
        return DockerSource(daemon, self.name, ctx)

    def open_output(self, ctx: RunContext) -> DockerDestination:
        daemon = self.daemon()
        with daemon.session():
            pass  # a wrong socket fails before the source is read
        return DockerDestination(daemon, self.name, ctx)


class _BodyReader:
    """A streamed response body as a `read(size)` stream, counting bytes as they arrive.

    Each read slices only what it returns, so small reads of a large chunk stay linear."""

    def __init__(self, response: httpx.Response, on_bytes: Callable[[int], None]) -> None:
        self._chunks = response.iter_raw(compression.CHUNK_SIZE)
        self._on_bytes = on_bytes
        self._chunk = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if self._offset >= len(self._chunk):
            self._chunk, self._offset = next(self._chunks, b""), 0
            self._on_bytes(len(self._chunk))
        end = len(self._chunk) if size < 0 else min(len(self._chunk), self._offset + size)
        data = self._chunk[self._offset : end]
        self._offset = end
        return data


class DockerSource:
    """Reads NAME:TAG from the daemon: inspected first, then its export spooled and read."""

    def __init__(self, daemon: Daemon, name: str, ctx: RunContext) -> None:
        self.daemon, self.name, self.ctx = daemon, name, ctx

    def read(self) -> Image:
        where = f"the export of {self.name} from {self.daemon.socket}"
        key = f"export:{self.name}"
        spool = self.ctx.workdir / f"docker-export-{id(self):x}"

        def on_bytes(count: int) -> None:
            self.ctx.progress.advance(key, count)
            self.ctx.stats.add(bytes_downloaded=count)

        with self.daemon.session() as client:
            if self.daemon.inspect(client, self.name) is None:
                raise OccystrapError(
                    f"no image {self.name} in the daemon at {self.daemon.socket}: check the"
                    f" name with `docker images` (or `podman images`); {_REGISTRY_HINT}"
                )
            self.ctx.progress.start(key, None, f"export {self.name}")
            with client.stream("GET", f"/images/{self.name}/get") as response:
                if response.status_code != 200:
                    raise self.daemon.error(response, f"export {self.name}")
                members = SpooledTarMembers(_BodyReader(response, on_bytes), spool, where)
            self.ctx.progress.finish(key)
        image = DockerSaveReader(members).read()
        return replace(image, source=name_and_tag(self.name))


class _PipeEnd:
    """The pipe's writing end as tarfile's "w" mode wants a file: it asks `tell()` once, where
    the archive starts (its streaming "w|" mode would not, but copies every block twice)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.position = raw, 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


class _SaveStream:
    """A docker-save tarball written by a thread into a pipe, read back as a request body.

    Nothing is held whole: the writer blocks while the daemon is slower than the layers.
    """

    def __init__(self, image: Image, repo_tag: str, ctx: RunContext) -> None:
        self.image, self.repo_tag, self.ctx = image, repo_tag, ctx
        read_end, write_end = os.pipe()
        # Closed by __exit__ and by the writing thread: the two ends outlive this method.
        self._reader = open(read_end, "rb", buffering=0)  # noqa: SIM115
        self._writer = open(write_end, "wb")  # noqa: SIM115
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="docker-save", daemon=True)

    def _write(self) -> None:
        try:
            with self._writer:
                out: Any = _PipeEnd(self._writer)  # writes and tell(): all tarfile asks for
                layers = local_layers(self.image, self.ctx)
                write_docker_save(out, self.image, self.repo_tag, layers, self.ctx.progress)
        except BaseException as error:  # handed to the reading side, which raises it
            self._error = error

    def chunks(self) -> Iterator[bytes]:
        """The tarball's bytes; the writer's failure, if any, is raised at the end.

        Raising aborts the request before its last (empty) chunk, so the daemon sees a cut
        body and loads nothing, even when a layer failed its digest only at its end."""
        while chunk := self._reader.read(compression.CHUNK_SIZE):
            self.ctx.stats.add(bytes_uploaded=len(chunk))
            yield chunk
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> _SaveStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._reader.close()  # a writer still running gets BrokenPipeError and stops
        # After Ctrl-C, the writer (a daemon thread) gets the grace every worker gets.
        self._thread.join(cancel.GRACE_SECONDS if cancel.CANCELLED.is_set() else None)


def load_error(lines: Iterable[str]) -> str | None:
    """The error (on one line) among a load's JSON lines of progress and "Loaded image"."""
    for line in lines:
        try:
            message = parse_json(line) if line.strip() else None
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        detail = message.get("errorDetail")
        error = message.get("error") or (
            detail.get("message") if isinstance(detail, dict) else detail
        )
        if error:
            return _one_line(str(error))
        LOG.debug("daemon: %s", _one_line(str(message.get("stream") or message)))
    return None


class DockerDestination:
    """Loads one image into the daemon as NAME:TAG and checks that it is listed so."""

    def __init__(self, daemon: Daemon, name: str, ctx: RunContext) -> None:
        self.daemon, self.name, self.ctx = daemon, name, ctx

    def write(self, item: ImageLike) -> str:
        if not isinstance(item, Image):
            raise OccystrapError(f"docker://{self.name} holds one image, not an index")
        with self.daemon.session() as client:
            with _SaveStream(item, self.name, self.ctx) as body:
                request = client.build_request(
                    "POST",
                    "/images/load",
                    content=body.chunks(),
                    headers={"Content-Type": "application/x-tar"},
                )
                response = client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise self.daemon.error(response, f"load {self.name}")
                    error = load_error(response.iter_lines())
                    if error is not None:
                        raise OccystrapError(
                            f"the daemon at {self.daemon.socket} failed to load {self.name}:"
                            f" {error}"
                        )
                finally:
                    response.close()
            return self._confirm(client, item)

    def _confirm(self, client: httpx.Client, image: Image) -> str:
        """The image ID the daemon lists under NAME:TAG, checked to have this image's layers."""
        listed = self.daemon.inspect(client, self.name)
        if listed is None:
            raise OccystrapError(
                f"the daemon at {self.daemon.socket} accepted the image but does not list it"
                f" as {self.name}; check the daemon's log"
            )
        layers = (listed.get("RootFS") or {}).get("Layers")
        wanted = [layer.diff_id for layer in image.layers]
        if layers != wanted:
            raise OccystrapError(
                f"the daemon at {self.daemon.socket} lists another image as {self.name} after"
                f" the load (its layers are {layers}, not {wanted}); check the daemon's log"
            )
        return str(listed.get("Id") or image.config_digest)


def _parse(text: str, rest: str) -> DockerURI:
    body, query = split_query(rest)
    options = query_options(text, query, ("socket",))
    if not body:
        raise UsageError(f"no image name in {text!r}: expected {FORM}")
    if "@" in body:
        raise UsageError(f"{text!r} names a digest: a daemon's images are named {FORM}")
    last = body.rpartition("/")[2]
    name = body if ":" in last else f"{body}:latest"
    try:
        name_and_tag(name)
    except UsageError:
        raise UsageError(
            f"invalid image name {body!r} in {text!r}: expected {FORM}, NAME in lower case"
            " (e.g. busybox, library/busybox:1.36, registry.example:5000/tools/app:v1)"
        ) from None
    return DockerURI(name=name, socket=non_empty_option(text, "socket", options.get("socket")))


SCHEME = Scheme("docker", FORM, _parse)
