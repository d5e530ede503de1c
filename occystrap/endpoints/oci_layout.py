"""oci-layout://PATH[?tag=TAG]: an OCI image layout directory, read and written.

The layout skopeo (`oci:PATH:TAG`), crane, regctl (`ocidir://`), buildah and umoci use. As a
source, `tag` picks the `index.json` entry whose `org.opencontainers.image.ref.name` it is
(needed only when the layout holds more than one); an index there is copied like a
registry's. As a destination, the image or whole index is stored under `tag` (default: the
source's tag, else `latest`), beside whatever else the layout holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from occystrap.archive import DirectoryMembers
from occystrap.endpoints import (
    Endpoint,
    Scheme,
    non_empty_option,
    path_of,
    query_options,
    split_query,
)
from occystrap.errors import OccystrapError
from occystrap.graph import StoreSource
from occystrap.image import ImageLike
from occystrap.ocilayout import (
    LAYOUT_FILE,
    DirectoryStorage,
    LayoutDestination,
    OciLayoutReader,
    OciLayoutWriter,
)
from occystrap.pipeline import RunContext


@dataclass
class OciLayoutURI(Endpoint):
    path: Path
    tag: str | None = None

    def layout(self, ctx: RunContext) -> DirectoryStorage:
        """The layout's storage, as a bucket URI's `layout` gives a bucket's."""
        return DirectoryStorage(self.path)

    def open_input(self, ctx: RunContext) -> OciLayoutSource:
        return OciLayoutSource(self.path, self.tag)

    def open_output(self, ctx: RunContext) -> LayoutDestination:
        destination = LayoutDestination(OciLayoutWriter(self.path, ctx), self.tag)
        destination.writer.check()
        return destination


class OciLayoutSource:
    def __init__(self, path: Path, tag: str | None) -> None:
        self.path, self.tag = path, tag

    def _reader(self) -> OciLayoutReader:
        if not (self.path / LAYOUT_FILE).is_file():
            raise OccystrapError(
                f"{self.path} is not an OCI image layout (no {LAYOUT_FILE} file); write one with"
                f" `occystrap process SOURCE oci-layout://{self.path}` or `skopeo copy ... oci:`"
            )
        return OciLayoutReader(DirectoryMembers(self.path))

    def read(self) -> ImageLike:
        return self._reader().read(self.tag)

    def manifest_source(self) -> StoreSource:
        return self._reader().manifests(self.tag)


def _parse(text: str, rest: str) -> OciLayoutURI:
    body, query = split_query(rest)
    options = query_options(text, query, ("tag",))
    return OciLayoutURI(
        path=path_of(text, body), tag=non_empty_option(text, "tag", options.get("tag"))
    )


SCHEME = Scheme("oci-layout", "oci-layout://PATH[?tag=TAG]", _parse)
