"""tar://PATH: a `docker save` tarball (classic or OCI layout), read in place, written whole.

As a source it also takes an OCI image layout packed as a tarball (skopeo's `oci-archive:`,
`podman save --format oci-archive`) holding one image or index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from occystrap.atomic import atomic_file
from occystrap.destinations import check_file_destination
from occystrap.dockersave import DockerSaveReader, TarMembers, repo_tag_of, write_docker_save
from occystrap.endpoints import Endpoint, Scheme, path_of
from occystrap.errors import OccystrapError
from occystrap.image import Image, ImageLike
from occystrap.ocilayout import LayoutManifests, OciLayoutReader, is_oci_layout
from occystrap.pipeline import RunContext
from occystrap.prefetch import prefetched_layers


@dataclass
class TarURI(Endpoint):
    path: Path

    def open_input(self, ctx: RunContext) -> TarSource:
        return TarSource(self.path)

    def open_output(self, ctx: RunContext) -> TarDestination:
        check_file_destination(self.path)
        return TarDestination(self.path, ctx)


class TarSource:
    def __init__(self, path: Path) -> None:
        self.path = path

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
        return DockerSaveReader(self._members).read()

    def manifest_source(self) -> LayoutManifests | None:
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
        with atomic_file(self.path) as handle:
            write_docker_save(
                handle,
                item,
                repo_tag_of(item.source),
                prefetched_layers(item.layers, self.ctx),
                self.ctx.progress,
            )


# No options: a '?' may be part of the file name.
SCHEME = Scheme("tar", "tar://PATH", lambda text, rest: TarURI(path_of(text, rest)))
