"""What earlier runs learnt about blobs, so a later run need not repeat the work.

Two facts are kept, in a small sqlite database under `$XDG_CACHE_HOME/occystrap/`:

- for an uncompressed layer (its diff_id) and a compression setting
  (`compression.output_setting`), the digest, size and media type of the compressed blob:
  compression is deterministic, so a later push of the same layer can name its blob
  without compressing it;
- for a blob digest, the repositories of a registry known to hold it: a push can then ask
  that registry to mount the blob instead of uploading it.

The cache is a hint, never proof: the caller still HEADs the destination or lets the mount's
answer decide, and calls `forget_location` when a hint was wrong. Nothing secret is stored
(digests, sizes, media types, registry hosts and repository names only). Several occystrap
runs may share the file at once (WAL journal, busy timeout); each table keeps at most
`max_entries` rows, dropping the least recently recorded. Any database failure disables the
cache for the rest of the run with one warning: a broken cache never breaks a copy.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

LOG = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 50_000  # per table; a row is ~200 bytes, so ~10 MB per table at most
_BUSY_TIMEOUT_SECONDS = 5.0
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS compressed (
    diff_id TEXT NOT NULL,
    setting TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (diff_id, setting)
);
CREATE INDEX IF NOT EXISTS compressed_recorded ON compressed (recorded);
CREATE TABLE IF NOT EXISTS locations (
    digest TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
CREATE INDEX IF NOT EXISTS locations_recorded ON locations (recorded);
"""
# host, optional port: never a URL, never user:password@host
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


class CompressedBlob(NamedTuple):
    digest: str
    size: int
    media_type: str


def default_path() -> Path:
    """`$XDG_CACHE_HOME/occystrap/blobs.sqlite`; ~/.cache when XDG_CACHE_HOME is unset or
    relative, as the XDG base directory specification says."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "occystrap" / "blobs.sqlite"


def _check_registry(registry: str) -> None:
    if not _REGISTRY.match(registry):
        raise ValueError(f"registry must be a host[:port], not {registry!r}")


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    """WAL mode, waiting out another process that is creating the same file: sqlite answers
    "database is locked" to this switch at once, without its busy handler."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _schema_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _create_schema(connection: sqlite3.Connection) -> None:
    """This version's tables, in place of an older or newer layout's; another process may be
    doing the same, so the version is checked again inside the write transaction."""
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        if _schema_version(connection) != _SCHEMA_VERSION:  # start afresh
            connection.execute("DROP TABLE IF EXISTS compressed")
            connection.execute("DROP TABLE IF EXISTS locations")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")


class BlobCache:
    """The sqlite cache; use `BlobCache.open()`, or `NullBlobCache()` for --no-cache."""

    def __init__(self, connection: sqlite3.Connection | None, max_entries: int) -> None:
        self._connection = connection
        self._max_entries = max_entries
        self._lock = threading.Lock()  # one connection, shared by the transfer threads

    @classmethod
    def open(cls, path: Path | None = None, max_entries: int = DEFAULT_MAX_ENTRIES) -> BlobCache:
        """The cache at `path` (default: `default_path()`), created if missing. A file that
        cannot be used gives a cache that remembers nothing, with a warning."""
        path = path or default_path()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            connection = sqlite3.connect(
                path,
                timeout=_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # autocommit; writes use explicit transactions
                check_same_thread=False,
            )
            try:
                _switch_to_wal(connection)
                connection.execute("PRAGMA synchronous=NORMAL")  # a cache may lose its tail
                # The version is set with the tables, in one transaction: a cache already at
                # this version is used as it is, with no write (and no WAL sync) at start-up.
                if _schema_version(connection) != _SCHEMA_VERSION:
                    _create_schema(connection)
            except sqlite3.Error:
                connection.close()
                raise
        except (OSError, sqlite3.Error) as error:
            LOG.warning("blob cache %s unusable, continuing without it: %s", path, error)
            return NullBlobCache()
        return cls(connection, max_entries)

    def __enter__(self) -> BlobCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _write(self, table: str, statement: str, parameters: tuple[object, ...]) -> None:
        """Run one insert in a transaction, then drop the oldest rows beyond the bound."""
        with self._lock:
            if self._connection is None:
                return
            try:
                with self._connection:
                    self._connection.execute("BEGIN IMMEDIATE")
                    self._connection.execute(statement, parameters)
                    self._connection.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
                        " ORDER BY recorded DESC LIMIT -1 OFFSET ?)",
                        (self._max_entries,),
                    )
            except sqlite3.Error as error:
                self._disable(error)

    def _read(self, statement: str, parameters: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._connection is None:
                return []
            try:
                return self._connection.execute(statement, parameters).fetchall()
            except sqlite3.Error as error:
                self._disable(error)
                return []

    def _disable(self, error: sqlite3.Error) -> None:
        LOG.warning("blob cache disabled for this run: %s", error)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def record_compressed(
        self, diff_id: str, setting: str, digest: str, size: int, media_type: str
    ) -> None:
        """Compressing the layer `diff_id` with `setting` gave blob `digest`."""
        self._write(
            "compressed",
            "INSERT OR REPLACE INTO compressed VALUES (?, ?, ?, ?, ?, ?)",
            (diff_id, setting, digest, size, media_type, time.time()),
        )

    def forget_compressed(self, diff_id: str, setting: str) -> None:
        """What was remembered for `diff_id` and `setting` proved wrong."""
        self._write(
            "compressed",
            "DELETE FROM compressed WHERE diff_id = ? AND setting = ?",
            (diff_id, setting),
        )

    def compressed_for(self, diff_id: str, setting: str) -> CompressedBlob | None:
        """The blob an earlier run made from `diff_id` with `setting`, if one is known."""
        rows = self._read(
            "SELECT digest, size, media_type FROM compressed WHERE diff_id = ? AND setting = ?",
            (diff_id, setting),
        )
        if not rows:
            return None
        return CompressedBlob(*rows[0])

    def record_location(self, digest: str, registry: str, repository: str) -> None:
        """`registry` (host[:port]) holds `digest` in `repository`."""
        _check_registry(registry)
        self._write(
            "locations",
            "INSERT OR REPLACE INTO locations VALUES (?, ?, ?, ?)",
            (digest, registry, repository, time.time()),
        )

    def forget_location(self, digest: str, registry: str, repository: str) -> None:
        """The registry said `repository` does not hold `digest` (any more)."""
        _check_registry(registry)
        self._write(
            "locations",
            "DELETE FROM locations WHERE digest = ? AND registry = ? AND repository = ?",
            (digest, registry, repository),
        )

    def locations(self, digest: str, registry: str) -> list[str]:
        """Repositories of `registry` known to hold `digest`, most recently seen first."""
        _check_registry(registry)
        rows = self._read(
            "SELECT repository FROM locations WHERE digest = ? AND registry = ?"
            " ORDER BY recorded DESC",
            (digest, registry),
        )
        return [repository for (repository,) in rows]


class NullBlobCache(BlobCache):
    """Remembers nothing and answers nothing: --no-cache, or a cache file that is unusable."""

    def __init__(self) -> None:
        super().__init__(None, 0)


def open_blob_cache(enabled: bool, path: Path | None = None) -> BlobCache:
    """The cache a run uses: `RunSettings.use_cache` decides whether it is a real one."""
    return BlobCache.open(path) if enabled else NullBlobCache()
