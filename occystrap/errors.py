"""Errors a user can act on: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeGuard, TypeVar

if TYPE_CHECKING:
    import httpx

E = TypeVar("E", bound=BaseException)


def is_network_error(exc: BaseException) -> TypeGuard[httpx.RequestError]:
    """An httpx.RequestError (connection failure, timeout, redirect loop), without importing
    httpx: a run that raised one has loaded it already, and a file-to-file copy never does."""
    loaded = sys.modules.get("httpx")
    return loaded is not None and isinstance(exc, loaded.RequestError)


class OccystrapError(Exception):
    """A failure the user can fix; its message says what is wrong and what to do."""


class UsageError(OccystrapError):
    """Bad input on the command line: a malformed URI, an unknown option value."""


class RegistryError(OccystrapError):
    """A registry answered with an error we cannot recover from.

    Library callers can tell failures apart without parsing the message: `status` is the
    HTTP status (None when no answer was involved), `codes` the OCI error codes the body
    named (e.g. MANIFEST_UNKNOWN), `advice` what the user can do.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: tuple[str, ...] = (),
        advice: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.codes, self.advice = status, codes, advice


class DigestMismatchError(OccystrapError):
    """Bytes received do not hash to the digest that names them."""


class QuayAuthError(OccystrapError):
    """The Quay API refused our token (or we had none)."""


class FilesystemError(OccystrapError):
    """The local filesystem refused: full, read-only, not writable, not a directory."""


# What each errno means for the user, and what they can do about it.
_FILESYSTEM_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or write somewhere bigger"
    " (--temp-dir moves the staging area)",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.EFBIG: "file too large for this filesystem; write somewhere else",
    errno.EROFS: "the filesystem is read-only; write somewhere else",
    errno.EACCES: "permission denied; choose a path you can write to",
    errno.EPERM: "operation not permitted; choose a path you can write to",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "it does not exist",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EMFILE: "too many open files; raise `ulimit -n` or lower --parallel",
    errno.ENFILE: "too many open files on the system; lower --parallel",
    errno.EIO: "input/output error from the device; check the disk",
}

# Errors that say the filesystem cannot take more writes: never worth carrying on.
WRITE_FAILURES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE}
)


def filesystem_error(error: OSError, path: str | os.PathLike[str] | None = None) -> FilesystemError:
    """One line for an OSError: which path, what went wrong, what to do.

    `path` names the place when the error itself does not (a failed `write()` carries no
    file name), e.g. the output file or the temporary directory being filled.
    """
    where = path if path is not None else error.filename
    advice = _FILESYSTEM_ADVICE.get(error.errno or 0) or error.strerror or str(error)
    return FilesystemError(f"{where}: {advice}" if where is not None else advice)


@contextmanager
def writing_to(place: str | os.PathLike[str]) -> Iterator[None]:
    """Report a full, read-only or failing filesystem met inside the block in one line
    naming `place` (the output, or the temporary directory being filled); a bare `write()`
    error names no file, and would otherwise surface as a traceback or a misleading message.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_FAILURES:
            raise
        raise filesystem_error(error, place) from None


def find_cause(error: BaseException, kind: type[E]) -> E | None:
    """The exception of `kind` somewhere in `error`'s chain of causes (httpx wraps socket
    and TLS errors), or None."""
    seen: set[int] = set()
    node: BaseException | None = error
    while node is not None and id(node) not in seen:
        if isinstance(node, kind):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None
