"""docker://NAME[:TAG][?socket=PATH]: an image in a Docker (or Podman) daemon, over its socket.

The daemon's API client and where its socket is live in occystrap/daemon/ (its own small
client over the Unix socket, outside the registry chain); this module is the endpoint.

Reading inspects the image, then streams `GET /images/NAME/get` (a docker-save tarball,
classic or OCI layout). That stream names its image only at its end (`manifest.json` comes
after the layers), so it is spooled first: small members in memory, layers to files in the
run's work directory as they pass. Writing streams a docker-save tarball, built as layers
arrive, into `POST /images/load` through a pipe, then checks that the daemon lists the image
under NAME:TAG with the same layers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import httpx

from occystrap import cancel, compression
from occystrap.archive import SpooledTarMembers, name_and_tag
from occystrap.daemon.client import Daemon, load_error
from occystrap.daemon.sockets import REGISTRY_HINT, find_socket
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
from occystrap.errors import OccystrapError, UsageError
from occystrap.image import Image, ImageLike
from occystrap.pipeline import RunContext, local_layers

LOG = logging.getLogger("occystrap.docker")

FORM = "docker://NAME[:TAG][?socket=PATH]"


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
                    f" name with `docker images` (or `podman images`); {REGISTRY_HINT}"
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
                stored = write_docker_save(
                    out,
                    self.image,
                    self.repo_tag,
                    layers,
                    self.ctx.progress,
                    self.ctx.cancellation,
                )
            self.ctx.stats.add(bytes_uploaded=stored)
        except BaseException as error:  # handed to the reading side, which raises it
            self._error = error

    def chunks(self) -> Iterator[bytes]:
        """The tarball's bytes; the writer's failure, if any, is raised at the end.

        Raising aborts the request before its last (empty) chunk, so the daemon sees a cut
        body and loads nothing, even when a layer failed its digest only at its end."""
        while chunk := self._reader.read(compression.CHUNK_SIZE):
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
        self._thread.join(cancel.GRACE_SECONDS if self.ctx.cancellation.is_set() else None)


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
