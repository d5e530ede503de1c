"""Reading image archives: the regular files of a docker-save or OCI tree, whether a
seekable tarball (read in place), a directory, or a non-seekable stream (spooled), behind one
`MemberSource` protocol; and the image name a docker RepoTag gives. Shared by the docker-save
reader (dockersave.py) and the OCI layout reader (ocilayout.py).
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
from pathlib import Path
from typing import Protocol

from occystrap import compression
from occystrap.errors import OccystrapError
from occystrap.image import ArchiveMemberBlob, Blob, FileBlob, SourceName
from occystrap.registry.hosts import DOCKER_HUB_HOST
from occystrap.registry.reference import parse_reference
from occystrap.streams import Readable

SPOOL_IN_MEMORY = 256 * 1024  # larger members of a tar stream are spooled to files


def member_key(name: str) -> str:
    return posixpath.normpath(name).lstrip("/")


def name_and_tag(repo_tag: str) -> SourceName:
    """The source name a docker RepoTag gives (registry None for Docker Hub)."""
    first, slash, _ = repo_tag.partition("/")
    host_like = slash and ("." in first or ":" in first or first == "localhost")
    reference = parse_reference(repo_tag if host_like else f"docker.io/{repo_tag}")
    registry = None if reference.registry == DOCKER_HUB_HOST else reference.registry
    return SourceName(reference.repository, reference.tag, registry)


class MemberSource(Protocol):
    """The regular files of a docker-save tree, by normalised name."""

    where: str  # for messages: the tarball's or directory's path

    def has(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def read(self, name: str) -> bytes:
        """A small member's bytes."""
        ...

    def blob(self, name: str) -> Blob:
        """A large member, to be streamed later."""
        ...


class TarMembers:
    """Members of a seekable tarball, located by offset so layers are read in place."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)
        try:
            with tarfile.open(self.path, "r:") as archive:
                self._members = {
                    member_key(m.name): (m.offset_data, m.size)
                    for m in archive.getmembers()
                    if m.isfile()
                }
        except tarfile.ReadError as error:
            raise OccystrapError(
                f"cannot read {path} as an uncompressed tarball ({error}); check that it is a"
                " docker save or OCI archive"
            ) from None
        except OSError as error:
            raise OccystrapError(f"cannot read {path}: {error.strerror or error}") from None

    def has(self, name: str) -> bool:
        return name in self._members

    def size(self, name: str) -> int:
        return self._members[name][1]

    def read(self, name: str) -> bytes:
        with self.blob(name).open() as stream:
            return stream.read()

    def blob(self, name: str) -> ArchiveMemberBlob:
        offset, size = self._members[name]
        return ArchiveMemberBlob(self.path, offset, size, name)


class DirectoryMembers:
    """The files of a directory holding an unpacked docker-save tree (a dir:// output)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)

    def _file(self, name: str) -> Path:
        file = self.path / name
        # Names come from the tree's own JSON, and its directories may be symlinks: only a
        # file that really lies inside the directory is read.
        if not file.resolve().is_relative_to(self.path.resolve()):
            raise OccystrapError(f"{self.where}: {name!r} points outside the directory")
        return file

    def has(self, name: str) -> bool:
        file = self._file(name)
        return file.is_file() and not file.is_symlink()

    def size(self, name: str) -> int:
        return self._file(name).stat().st_size

    def read(self, name: str) -> bytes:
        return self._file(name).read_bytes()

    def blob(self, name: str) -> FileBlob:
        return FileBlob(self._file(name))


class SpooledTarMembers:
    """The regular files of a non-seekable tar stream (a daemon's export), spooled as they pass.

    A docker-save stream names its image last (`manifest.json` follows the layers), so
    nothing can be read before the stream has ended: small members are kept in memory, larger
    ones (layers) written to files under `directory` as they arrive, never the whole stream
    in memory. The files stay until the run's work directory is removed.
    """

    def __init__(
        self, stream: Readable, directory: Path, where: str, small_limit: int = SPOOL_IN_MEMORY
    ) -> None:
        self.where = where
        self._directory = directory
        self._small: dict[str, bytes] = {}
        self._files: dict[str, Path] = {}
        self._count = 0
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    if member.isfile():
                        self._spool(archive, member, small_limit)
        except tarfile.TarError as error:
            raise OccystrapError(
                f"{where}: not a complete tar stream ({error}); try again, and check the"
                " daemon's log if it keeps failing"
            ) from None

    def _new_file(self) -> Path:
        self._count += 1
        return self._directory / f"member-{self._count}"

    def _spool(self, archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> None:
        key = member_key(member.name)
        source = archive.extractfile(member)
        assert source is not None  # a regular file always has content
        self._small.pop(key, None)  # a later member of the same name wins, as in tar
        replaced = self._files.pop(key, None)
        if replaced is not None:
            replaced.unlink()
        if member.size <= limit:
            self._small[key] = source.read()
            return
        path = self._new_file()
        with open(path, "wb") as spooled:
            shutil.copyfileobj(source, spooled, compression.CHUNK_SIZE)
        self._files[key] = path

    def has(self, name: str) -> bool:
        return name in self._small or name in self._files

    def size(self, name: str) -> int:
        if name in self._small:
            return len(self._small[name])
        return self._files[name].stat().st_size

    def read(self, name: str) -> bytes:
        if name in self._small:
            return self._small[name]
        return self._files[name].read_bytes()

    def blob(self, name: str) -> FileBlob:
        if name in self._small:  # a tiny layer: given a file of its own, as blobs are files
            path = self._new_file()
            path.write_bytes(self._small.pop(name))
            self._files[name] = path
        return FileBlob(self._files[name])
