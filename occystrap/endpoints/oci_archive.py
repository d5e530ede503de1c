"""oci-archive://PATH[?tag=TAG&overwrite=BOOL]: an OCI image layout packed as one tarball.

The archive skopeo writes for `oci-archive:PATH:TAG` (and `podman save --format
oci-archive`): `oci-layout`, `index.json` and `blobs/` at the top of a plain tar. The layout
is filled in the work directory as `oci-layout://` fills a directory (between places that
store manifests every manifest, index and blob byte for byte; an image a filter made as an
OCI image), the image or index tagged `tag` (default: the source's tag, else `latest`), then
packed into PATH, which appears only once complete, with the image's referrers when
`--referrers` copies them (kept as `oci-layout://` keeps them). An existing file is replaced
only with `?overwrite=true` or `--force`. As a source, `tar://PATH` reads such an archive.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from occystrap.archive import DirectoryMembers
from occystrap.atomic import atomic_file
from occystrap.destinations import check_file_destination
from occystrap.dockersave import tar_member_info
from occystrap.endpoints import (
    Endpoint,
    Scheme,
    boolean_option,
    non_empty_option,
    path_of,
    query_options,
    split_query,
)
from occystrap.errors import writing_to
from occystrap.image import Image
from occystrap.ocilayout import (
    INDEX_FILE,
    LAYOUT_FILE,
    LayoutDestination,
    LayoutStore,
    OciLayoutReader,
    OciLayoutWriter,
)
from occystrap.pipeline import RunContext


@dataclass
class OciArchiveURI(Endpoint):
    path: Path
    tag: str | None = None
    overwrite: bool = False  # ?overwrite=true: replace an existing file

    def open_output(self, ctx: RunContext) -> OciArchiveDestination:
        target = check_file_destination(self.path, self.overwrite or ctx.settings.force)
        staging = Path(tempfile.mkdtemp(prefix="oci-archive-", dir=ctx.workdir))
        layout = LayoutDestination(OciLayoutWriter(staging, ctx), self.tag)
        return OciArchiveDestination(layout, staging, target)


class OciArchiveDestination:
    """A layout filled in the work directory, packed into the archive once the copy is done
    (`finish`); the work directory, staging included, goes with the run."""

    def __init__(self, layout: LayoutDestination, staging: Path, target: Path) -> None:
        self.layout, self.staging, self.target = layout, staging, target

    def write(self, item: Image) -> str:
        return self.layout.write(item)

    def manifest_sink(self) -> LayoutDestination:
        return self.layout

    def store(self) -> LayoutStore:
        """The staged layout as a store, for referrers (`--referrers`), packed with the rest."""
        return LayoutStore(OciLayoutReader(DirectoryMembers(self.staging)), self.layout.writer)

    def finish(self) -> None:
        with writing_to(self.target), atomic_file(self.target) as handle:
            pack_layout(self.staging, handle)


def pack_layout(directory: Path, out: BinaryIO) -> None:
    """The layout at `directory` as a tarball: `oci-layout` and `index.json` first, then
    `blobs/` in name order, times zero and owner root, so one layout always packs the same."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in (LAYOUT_FILE, INDEX_FILE):
            _add_file(archive, directory, name)
        for root, directories, files in os.walk(directory / "blobs"):
            directories.sort()
            relative = Path(root).relative_to(directory).as_posix()
            archive.addfile(tar_member_info(relative, 0, directory=True))
            for name in sorted(files):
                _add_file(archive, directory, f"{relative}/{name}")


def _add_file(archive: tarfile.TarFile, directory: Path, name: str) -> None:
    path = directory / name
    with open(path, "rb") as stream:
        archive.addfile(tar_member_info(name, os.fstat(stream.fileno()).st_size), stream)


def _parse(text: str, rest: str) -> OciArchiveURI:
    body, query = split_query(rest)
    options = query_options(text, query, ("tag", "overwrite"))
    return OciArchiveURI(
        path=path_of(text, body),
        tag=non_empty_option(text, "tag", options.get("tag")),
        overwrite=boolean_option(text, "overwrite", options.get("overwrite")),
    )


SCHEME = Scheme("oci-archive", "oci-archive://PATH[?tag=TAG&overwrite=BOOL]", _parse, source=False)
