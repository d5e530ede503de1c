"""Apply layer tars onto a root filesystem without ever writing outside it.

Every path is walked one component at a time from an open descriptor of the
target with O_NOFOLLOW, so no symlink (from this layer or a lower one) is ever
followed; entries are created relative to their parent's descriptor after
unlinking whatever was there. Members that would escape are skipped and counted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK_SIZE = 1024 * 1024


class UnsafeMember(Exception):
    """A member whose path, or link target, would reach outside the target."""


@dataclass
class ApplyReport:
    """What `apply_layer` refused or could not do, for the caller to report."""

    unsafe: list[str] = field(default_factory=list)
    skipped_devices: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def split_member_path(name: str) -> tuple[str, ...]:
    """The components of a member name inside the root; refuse absolute paths and `..`."""
    if name.startswith("/"):
        raise UnsafeMember(f"absolute path {name!r}")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeMember(f"parent reference in {name!r}")
    return parts


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove the entry `name` in `dir_fd` (a whole tree if a directory), never following links."""
    existing = _lstat_at(dir_fd, name)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


@contextmanager
def _open_directory(root_fd: int, parts: tuple[str, ...], create: bool) -> Iterator[int]:
    """An fd for the directory at `parts` under the root, refusing symlinks and non-directories."""
    current = os.dup(root_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=current)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=current)
                child = os.open(part, _DIR_FLAGS, dir_fd=current)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeMember(
                        f"{'/'.join(parts)!r} passes through a non-directory"
                    ) from None
                raise
            os.close(current)
            current = child
        yield current
    finally:
        os.close(current)


class _LayerApplier:
    """State for one layer: the root, what this layer wrote, and what was refused."""

    def __init__(self, root_fd: int, privileged: bool) -> None:
        self.root_fd = root_fd
        self.privileged = privileged
        self.written: set[tuple[str, ...]] = set()
        self.report = ApplyReport()

    def apply(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            try:
                parts = split_member_path(member.name)
                if parts:
                    self._apply_member(archive, member, parts)
            except UnsafeMember as reason:
                log.warning("Skipping layer member %r: %s", member.name, reason)
                self.report.unsafe.append(member.name)
            except OSError as error:
                log.warning("Could not extract layer member %r: %s", member.name, error)
                self.report.failed.append(member.name)

    def _apply_member(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        *parent, base = parts
        with _open_directory(self.root_fd, tuple(parent), create=True) as parent_fd:
            if base == OPAQUE_MARKER:
                self._clear_lower_layers(parent_fd, tuple(parent))
            elif base.startswith(WHITEOUT_PREFIX):
                hidden = base[len(WHITEOUT_PREFIX) :]
                if hidden and (*parent, hidden) not in self.written:
                    _remove_at(parent_fd, hidden)
            else:
                self._create(archive, member, parent_fd, base)
                self.written.update(parts[:depth] for depth in range(1, len(parts) + 1))

    def _clear_lower_layers(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Make a directory opaque: drop every entry below it not written by this layer."""
        for name in os.listdir(dir_fd):
            child = (*parts, name)
            if child not in self.written:
                _remove_at(dir_fd, name)
                continue
            status = _lstat_at(dir_fd, name)
            if status is not None and stat.S_ISDIR(status.st_mode):
                child_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self._clear_lower_layers(child_fd, child)
                finally:
                    os.close(child_fd)

    def _create(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, base: str
    ) -> None:
        existing = _lstat_at(parent_fd, base)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                _remove_at(parent_fd, base)
                os.mkdir(base, 0o700, dir_fd=parent_fd)
            mode = member.mode if self.privileged else member.mode | 0o700
            dir_fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                self._set_metadata(dir_fd, member, mode, set_times=False)
            finally:
                os.close(dir_fd)
            return
        if member.islnk():
            link_parts = split_member_path(member.linkname)
            if not link_parts:
                raise UnsafeMember(f"hard link to the root in {member.name!r}")
            *link_parent, link_base = link_parts
            with _open_directory(self.root_fd, tuple(link_parent), create=False) as source_fd:
                if _lstat_at(source_fd, link_base) is None:
                    raise OSError(errno.ENOENT, f"hard link target {member.linkname!r} is missing")
                _remove_at(parent_fd, base)
                os.link(
                    link_base, base, src_dir_fd=source_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False,
                )  # fmt: skip
            return
        _remove_at(parent_fd, base)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent_fd)
            if self.privileged:
                os.chown(base, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        elif member.isfile():
            self._write_file(archive, member, parent_fd, base)
        elif member.isfifo():
            os.mkfifo(base, member.mode & 0o7777, dir_fd=parent_fd)
        elif member.ischr() or member.isblk():
            if not self.privileged:
                self.report.skipped_devices.append(member.name)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, kind | (member.mode & 0o7777), device, dir_fd=parent_fd)
        else:
            raise OSError(errno.EINVAL, f"unsupported member type {member.type!r}")

    def _write_file(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, base: str
    ) -> None:
        source = archive.extractfile(member)
        file_fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
        with os.fdopen(file_fd, "wb") as destination:
            if source is not None:
                shutil.copyfileobj(source, destination, _CHUNK_SIZE)
            destination.flush()
            self._set_metadata(file_fd, member, member.mode, set_times=True)

    def _set_metadata(self, fd: int, member: tarfile.TarInfo, mode: int, set_times: bool) -> None:
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, mode & 0o7777)
        if set_times:
            os.utime(fd, (member.mtime, member.mtime))


def apply_layer(
    tar_stream: BinaryIO, target: Path, *, privileged: bool | None = None
) -> ApplyReport:
    """Apply one uncompressed layer tar onto `target`, honouring whiteouts and opaque markers.

    `privileged` (default: running as root) decides whether ownership is kept and
    device nodes created; otherwise devices are skipped and directories stay
    writable by us so later layers can still be applied.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        applier = _LayerApplier(root_fd, privileged)
        with tarfile.open(fileobj=tar_stream, mode="r|") as archive:
            applier.apply(archive)
    finally:
        os.close(root_fd)
    report = applier.report
    if report.skipped_devices:
        log.warning("Skipped %d device node(s): not running as root", len(report.skipped_devices))
    return report
