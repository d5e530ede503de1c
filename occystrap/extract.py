"""Apply layer tars onto a root filesystem without ever writing outside it.

Every path is walked one component at a time from an open descriptor of the
target with O_NOFOLLOW, so no symlink (from this layer or a lower one) is ever
followed; entries are created relative to their parent's descriptor after
unlinking whatever was there. Members that would escape are skipped and counted;
a whiteout of `.` or `..` rejects the whole layer, since it can only mean harm.

What a layer may do to the machine is limited too: device nodes and setuid/setgid
bits are reproduced only when asked, and an `ExpansionBudget` caps the bytes
written so a small compressed layer cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from occystrap.errors import WRITE_FAILURES, OccystrapError, filesystem_error
from occystrap.streams import CHUNK_SIZE
from occystrap.units import human_bytes

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux's PATH_MAX; no real image comes near either limit, and refusing longer names keeps
# the walks (and the recursion of an opaque directory's clean-up) bounded.
MAX_NAME_LENGTH = 4096
MAX_DEPTH = 256
# Each entry costs an inode and a tar header even when empty: charge it against the budget.
ENTRY_COST = 512
_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID

GIB = 1024**3
DEFAULT_EXPANSION_RATIO = 20
DEFAULT_EXPANSION_FLOOR = 1 * GIB


class UnsafeMember(Exception):
    """A member whose path, or link target, would reach outside the target."""


class HostileLayerError(OccystrapError):
    """A layer that is not a tar, or that holds an entry which can only be an attack."""


class ExpansionBudgetExceeded(OccystrapError):
    """Expanding the layers would write more than the budget allows."""


class ExpansionBudget:
    """Bytes an expansion may still write, shared by every layer of one image."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()  # layers are inflated by several threads at once

    @classmethod
    def for_compressed_size(
        cls,
        compressed: int,
        ratio: int = DEFAULT_EXPANSION_RATIO,
        floor: int = DEFAULT_EXPANSION_FLOOR,
    ) -> ExpansionBudget:
        """The default: `ratio` times the compressed size, but never less than `floor`."""
        return cls(max(compressed * ratio, floor))

    def charge(self, nbytes: int) -> None:
        with self._lock:
            self.used += nbytes
            used = self.used
        if used > self.limit:
            limit = human_bytes(self.limit, binary=True)
            raise ExpansionBudgetExceeded(
                f"expanding the image would write more than {limit}, its"
                " expansion budget; if you trust the image, raise the budget (max_expand)"
            )


@dataclass(frozen=True)
class ExpandPolicy:
    """What an expansion may reproduce, and how much it may write (None: the default budget)."""

    devices: bool = False
    setuid: bool = False
    max_bytes: int | None = None

    def budget_for(self, compressed: int) -> ExpansionBudget:
        """The budget for an image whose layers are `compressed` bytes in all."""
        if self.max_bytes is not None:
            return ExpansionBudget(self.max_bytes)
        return ExpansionBudget.for_compressed_size(compressed)


DEFAULT_POLICY = ExpandPolicy()

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_byte_size(text: str) -> int:
    """`123`, `512M`, `20G`, `1T` (binary units, optional `iB`/`B`) as a positive byte count."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:].isalpha() else (cleaned, "")
    if unit not in _SIZE_UNITS or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a size: expected a positive number, e.g. 512M or 20G")
    return int(number) * _SIZE_UNITS[unit]


@dataclass
class ApplyReport:
    """What `apply_layer` wrote (file bytes) and refused or could not do, for the caller
    to report."""

    file_bytes: int = 0  # the content of the regular files it created
    unsafe: list[str] = field(default_factory=list)
    skipped_devices: list[str] = field(default_factory=list)
    cleared_setuid: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def split_member_path(name: str) -> tuple[str, ...]:
    """The components of a member name inside the root; refuse absolute paths and `..`."""
    if name.startswith("/"):
        raise UnsafeMember(f"absolute path {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise UnsafeMember(f"name longer than {MAX_NAME_LENGTH} characters")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeMember(f"parent reference in {name!r}")
    if len(parts) > MAX_DEPTH:
        raise UnsafeMember(f"more than {MAX_DEPTH} directories deep")
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


# Owners are 32-bit on Linux; 2**32 - 1 means "leave unchanged" to chown, so it is refused too.
_MAX_ID = 2**32 - 2
# Device numbers in a 32-bit dev_t half; times that fit a 64-bit time_t in nanoseconds.
_MAX_DEVICE_NUMBER = 2**31 - 1
_MAX_MTIME = 2**33


def _check_numbers(member: tarfile.TarInfo) -> None:
    """Refuse a layer whose member has an owner, device number or time the kernel cannot take
    (tar's base-256 header fields hold any size), rather than crash on it."""
    for name, value, lowest, highest in (
        ("uid", member.uid, 0, _MAX_ID),
        ("gid", member.gid, 0, _MAX_ID),
        ("device major", member.devmajor, 0, _MAX_DEVICE_NUMBER),
        ("device minor", member.devminor, 0, _MAX_DEVICE_NUMBER),
        ("mtime", member.mtime, -_MAX_MTIME, _MAX_MTIME),
    ):
        if not lowest <= value <= highest:
            raise HostileLayerError(
                f"layer entry {member.name!r} has {name} {value}, which no Linux system can"
                " hold; the layer is hostile or corrupt, refusing it"
            )


class _LayerApplier:
    """State for one layer: the root, what this layer wrote, and what was refused."""

    def __init__(
        self,
        root_fd: int,
        privileged: bool,
        devices: bool,
        setuid: bool,
        budget: ExpansionBudget | None,
    ) -> None:
        self.root_fd = root_fd
        self.privileged = privileged
        self.devices = devices
        self.setuid = setuid
        self.budget = budget
        self.written: set[tuple[str, ...]] = set()
        self.report = ApplyReport()

    def apply(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            self._charge(ENTRY_COST)
            try:
                parts = split_member_path(member.name)
                _check_numbers(member)
                if parts:
                    self._apply_member(archive, member, parts)
            except UnsafeMember as reason:
                log.warning("Skipping layer member %r: %s", member.name, reason)
                self.report.unsafe.append(member.name)
            except OSError as error:
                if error.errno in WRITE_FAILURES:
                    raise
                log.warning("Could not extract layer member %r: %s", member.name, error)
                self.report.failed.append(member.name)

    def _charge(self, nbytes: int) -> None:
        if self.budget is not None:
            self.budget.charge(nbytes)

    def _mode(self, member: tarfile.TarInfo, mode: int) -> int:
        """`mode` without setuid/setgid unless they were asked for (noting what was cleared)."""
        if mode & _PRIVILEGE_BITS and not self.setuid:
            self.report.cleared_setuid.append(member.name)
            return mode & ~_PRIVILEGE_BITS
        return mode

    def _apply_member(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        *parent, base = parts
        with _open_directory(self.root_fd, tuple(parent), create=True) as parent_fd:
            if base == OPAQUE_MARKER:
                self._clear_lower_layers(parent_fd, tuple(parent))
            elif base.startswith(WHITEOUT_PREFIX):
                hidden = base[len(WHITEOUT_PREFIX) :]
                if hidden in (".", ".."):
                    raise HostileLayerError(
                        f"layer entry {member.name!r} is a whiteout of {hidden!r}, which would"
                        " delete the directory itself or its parent; the layer is hostile or"
                        " corrupt, refusing it"
                    )
                if hidden and (*parent, hidden) not in self.written:
                    self._white_out(parent_fd, hidden)
            else:
                self._create(archive, member, parent_fd, base)
                self.written.update(parts[:depth] for depth in range(1, len(parts) + 1))

    def _white_out(self, dir_fd: int, name: str) -> None:
        _remove_at(dir_fd, name)

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
            mode = self._mode(member, member.mode if self.privileged else member.mode | 0o700)
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
            if not (self.devices and self.privileged):
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
            while source is not None and (chunk := source.read(CHUNK_SIZE)):
                self._charge(len(chunk))
                destination.write(chunk)
                self.report.file_bytes += len(chunk)
            destination.flush()
            self._set_metadata(file_fd, member, self._mode(member, member.mode), set_times=True)

    def _set_metadata(self, fd: int, member: tarfile.TarInfo, mode: int, set_times: bool) -> None:
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, mode & 0o7777)
        if set_times:
            os.utime(fd, (member.mtime, member.mtime))


class _OverlayLayerWriter(_LayerApplier):
    """Writes one layer in overlayfs form, into its own empty directory: deletions are kept
    as overlayfs markers for the layers below rather than carried out."""

    def _white_out(self, dir_fd: int, name: str) -> None:
        # Nothing lower lives here, so nothing is removed: an existing entry is an error.
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)

    def _clear_lower_layers(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        os.setxattr(dir_fd, OVERLAY_OPAQUE_XATTR, b"y")

    lower: Sequence[Path] = ()  # the layers below, topmost first

    def _create(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, base: str
    ) -> None:
        existing = _lstat_at(parent_fd, base)
        if member.islnk() and self._copied_from_lower(member, parent_fd, base):
            return
        super()._create(archive, member, parent_fd, base)
        if member.isdir() and existing is not None and stat.S_ISCHR(existing.st_mode):
            # Deleted, then made again by this layer: it must hide what lower layers had there.
            dir_fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                self._clear_lower_layers(dir_fd, ())
            finally:
                os.close(dir_fd)

    def _copied_from_lower(self, member: tarfile.TarInfo, parent_fd: int, base: str) -> bool:
        """A hard link to a file of a lower layer: each overlay layer is its own directory,
        so the link cannot be made; the file is copied in under the link's name instead (as
        overlayfs copies a file up), so the merged view has it. False when the target is in
        this layer (a plain hard link) or in no layer below."""
        link_parts = split_member_path(member.linkname)
        if not link_parts:
            return False
        *link_parent, link_base = link_parts
        with (
            contextlib.suppress(OSError, UnsafeMember),
            _open_directory(self.root_fd, tuple(link_parent), create=False) as here,
        ):
            if _lstat_at(here, link_base) is not None:
                return False
        for layer in self.lower:
            layer_fd = os.open(layer, _DIR_FLAGS)
            try:
                with _open_directory(layer_fd, tuple(link_parent), create=False) as source_fd:
                    found = _lstat_at(source_fd, link_base)
                    if found is None:
                        continue
                    if not stat.S_ISREG(found.st_mode):
                        return False  # a whiteout, or not a file: nothing to link to
                    self._copy_file(source_fd, link_base, parent_fd, base, found)
                    return True
            except UnsafeMember:
                continue  # the path passes through a non-directory in that layer
            except FileNotFoundError:
                continue
            finally:
                os.close(layer_fd)
        return False

    def _copy_file(
        self, source_fd: int, name: str, parent_fd: int, base: str, found: os.stat_result
    ) -> None:
        _remove_at(parent_fd, base)
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_fd)
        with os.fdopen(source, "rb") as reader:
            file_fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
            with os.fdopen(file_fd, "wb") as writer:
                while chunk := reader.read(CHUNK_SIZE):
                    self._charge(len(chunk))
                    writer.write(chunk)
                    self.report.file_bytes += len(chunk)
                writer.flush()
                if self.privileged:
                    os.fchown(file_fd, found.st_uid, found.st_gid)
                os.fchmod(file_fd, stat.S_IMODE(found.st_mode))
                os.utime(file_fd, ns=(found.st_atime_ns, found.st_mtime_ns))


def apply_layer(
    tar_stream: BinaryIO,
    target: Path,
    *,
    privileged: bool | None = None,
    overlay: bool = False,
    lower: Sequence[Path] = (),
    devices: bool = False,
    setuid: bool = False,
    budget: ExpansionBudget | None = None,
    what: str = "layer",
) -> ApplyReport:
    """Apply one uncompressed layer tar onto `target`, honouring whiteouts and opaque markers.

    `privileged` (default: running as root) decides whether ownership is kept; otherwise
    directories stay writable by us so later layers can still be applied. Device nodes are
    created only with `devices` (and privilege), setuid/setgid bits kept only with `setuid`;
    either is otherwise skipped with one warning per layer. `budget` caps the bytes written.
    `overlay` writes the layer in overlayfs form into an empty `target` instead: a whiteout
    becomes a 0:0 character device and an opaque directory gets `trusted.overlay.opaque=y`
    (both need root); a hard link to a file of a `lower` layer (topmost first) becomes a
    copy of that file.

    Raises `OccystrapError` for a layer that is not a tar, is hostile, overruns the budget,
    or cannot be written (disk full, read-only); the caller removes the partial tree.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    writer = _OverlayLayerWriter if overlay else _LayerApplier
    applier = writer(0, privileged, devices, setuid, budget)
    if isinstance(applier, _OverlayLayerWriter):
        applier.lower = lower
    try:
        applier.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with tarfile.open(fileobj=tar_stream, mode="r|") as archive:
                applier.apply(archive)
        finally:
            os.close(applier.root_fd)
    except tarfile.TarError as error:
        raise HostileLayerError(f"{what} is not a valid tar archive: {error}") from None
    except OSError as error:
        raise filesystem_error(error, target) from None
    _warn_once(applier.report, what)
    return applier.report


def _warn_once(report: ApplyReport, what: str) -> None:
    if report.skipped_devices:
        log.warning(
            "%s: skipped %d device node(s) (create them with devices=true, as root)",
            what,
            len(report.skipped_devices),
        )
    if report.cleared_setuid:
        log.warning(
            "%s: cleared setuid/setgid on %d entries (keep them with setuid=true)",
            what,
            len(report.cleared_setuid),
        )


def read_file_in_root(root: Path, name: str, limit: int) -> bytes | None:
    """Up to `limit` bytes of the regular file `name` inside `root`, found without following
    any symlink (so never a file of the host); None if there is no such regular file."""
    try:
        *parent, base = split_member_path(name)
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            with _open_directory(root_fd, tuple(parent), create=False) as dir_fd:
                # O_NONBLOCK: opening a FIFO planted there must not hang us.
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(base, flags, dir_fd=dir_fd)
        finally:
            os.close(root_fd)
    except (UnsafeMember, ValueError, OSError):
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(limit)
