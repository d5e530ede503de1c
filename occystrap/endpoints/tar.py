"""tar://PATH: a `docker save` tarball (classic or OCI layout), read in place, written whole.

As a source it also takes an OCI image layout packed as a tarball (skopeo's `oci-archive:`,
`podman save --format oci-archive`) holding one image or index. `tar://-` is stdin as a
source (spooled to the work directory, since a tarball is read out of order) and stdout as
a destination, for pipes into `docker load` or ssh.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from occystrap.archive import TarMembers
from occystrap.atomic import atomic_file
from occystrap.destinations import check_file_destination
from occystrap.dockersave import (
    DockerSaveReader,
    describe_entries,
    repo_tag_of,
    write_docker_save,
)
from occystrap.endpoints import (
    Endpoint,
    Scheme,
    boolean_option,
    non_empty_option,
    path_of,
    query_options,
)
from occystrap.errors import OccystrapError, UsageError
from occystrap.graph import StoreSource
from occystrap.image import Image, ImageLike
from occystrap.ocilayout import OciLayoutReader, is_oci_layout
from occystrap.pipeline import RunContext, local_layers
from occystrap.prefetch import prefetched_layers
from occystrap.streams import CHUNK_SIZE

STANDARD_STREAM = Path("-")
_OPTIONS = ("image", "overwrite")
# A query is read as options only when it looks like them: a '?' may be part of a file name.
_QUERY = re.compile(r"[a-z_]+=[^&]*(?:&[a-z_]+=[^&]*)*")
_POSITION = re.compile(r"(.+)@([0-9]+)")


@dataclass
class TarURI(Endpoint):
    path: Path
    image: str | None = None  # ?image=NAME:TAG: the image of a many-image archive to read
    position: int | None = None  # @N: the Nth image (from 0) of a many-image archive
    overwrite: bool = False  # ?overwrite=true: replace an existing file

    def open_input(self, ctx: RunContext) -> TarSource:
        if self.overwrite:
            raise UsageError(f"{self}: overwrite= applies to a destination, not a source")
        path = self.path
        if path == STANDARD_STREAM:
            path = _spool_stdin(ctx.workdir)
        return TarSource(path, self.image, self.position, str(self))

    def open_output(self, ctx: RunContext) -> TarDestination:
        if self.image is not None or self.position is not None:
            raise UsageError(
                f"{self}: image= and @N pick an image to read; a destination holds one image"
            )
        if self.path == STANDARD_STREAM:
            if sys.stdout.isatty():
                raise UsageError(
                    "tar://- writes a tarball to stdout, which is a terminal; pipe it into"
                    " a program or redirect it to a file"
                )
            return TarDestination(self.path, ctx)
        overwrite = self.overwrite or ctx.settings.force
        return TarDestination(check_file_destination(self.path, overwrite), ctx)


def _spool_stdin(workdir: Path) -> Path:
    """Copy a tarball arriving on stdin into the work directory, where it can be read in place."""
    path = workdir / "stdin.tar"
    with open(path, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out, CHUNK_SIZE)
    return path


class TarSource:
    def __init__(
        self,
        path: Path,
        image: str | None = None,
        position: int | None = None,
        shown: str | None = None,
    ) -> None:
        self.path, self.image, self.position = path, image, position
        self.shown = shown or f"tar://{path}"

    @cached_property
    def _members(self) -> TarMembers:
        return TarMembers(self.path)

    def _oci_archive(self) -> OciLayoutReader | None:
        """A reader when the tarball is an OCI archive (skopeo's oci-archive:) and not a
        docker save; tar:// has no options to pick an image, so it must hold one."""
        members = self._members
        if not is_oci_layout(members) or members.has("manifest.json"):
            return None
        return OciLayoutReader(
            members, "unpack it and read the directory with oci-layout://DIR?tag=TAG"
        )

    def read(self) -> ImageLike:
        archive = self._oci_archive()
        if archive is not None:
            return archive.read()
        reader = DockerSaveReader(self._members)
        if self.image is None and self.position is None:
            entries = reader.entries()
            if len(entries) > 1:
                raise UsageError(
                    f"{self.shown} holds {len(entries)} images ({describe_entries(entries)});"
                    f" pick one with {self.shown}?image=NAME:TAG or {self.shown}@N"
                )
        return reader.read(self.image, self.position)

    def manifest_source(self) -> StoreSource | None:
        """An OCI archive stores manifests, so it is copied byte for byte where it can be."""
        archive = self._oci_archive()
        return None if archive is None else archive.manifests()


class TarDestination:
    """Writes one image as a tarball that `docker load`, podman and skopeo accept."""

    def __init__(self, path: Path, ctx: RunContext) -> None:
        self.path, self.ctx = path, ctx

    def write(self, item: ImageLike) -> None:
        if not isinstance(item, Image):
            raise OccystrapError(f"tar://{self.path} holds one image, not an index")
        if self.path == STANDARD_STREAM:
            self._write_to(sys.stdout.buffer, item)
            return
        with atomic_file(self.path) as handle:
            self._write_to(handle, item)

    def _write_to(self, handle: BinaryIO, item: Image) -> None:
        # A pipe cannot have a member's size filled in afterwards: each layer is inflated
        # into the work directory first, so its size is known before its header is written.
        layers = (
            prefetched_layers(item.layers, self.ctx)
            if handle.seekable()
            else local_layers(item, self.ctx)
        )
        stored = write_docker_save(
            handle,
            item,
            repo_tag_of(item.source),
            layers,
            self.ctx.progress,
            self.ctx.cancellation,
        )
        self.ctx.stats.add(bytes_uploaded=stored)


def _parse(text: str, body: str) -> TarURI:
    """PATH[@N][?image=NAME:TAG&overwrite=BOOL]; an existing file's name is read whole."""
    path = path_of(text, body)
    if os.path.lexists(path) or body == "-":
        return TarURI(path)
    rest, _, query = body.rpartition("?")
    options: dict[str, str] = {}
    if rest and _QUERY.fullmatch(query):
        options = query_options(text, query, _OPTIONS)
        body = rest
    position = None
    counted = _POSITION.fullmatch(body)
    if counted and not os.path.lexists(body):
        body, position = counted.group(1), int(counted.group(2))
    return TarURI(
        path_of(text, body),
        image=non_empty_option(text, "image", options.get("image")),
        position=position,
        overwrite=boolean_option(text, "overwrite", options.get("overwrite")),
    )


SCHEME = Scheme("tar", "tar://PATH|-[@N][?image=NAME:TAG&overwrite=BOOL]", _parse)
