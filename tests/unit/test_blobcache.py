"""The blob cache: what it remembers, its bound, concurrent writers, and failing safe."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occystrap import blobcache
from occystrap.blobcache import BlobCache, CompressedBlob, NullBlobCache

REPO_ROOT = Path(__file__).resolve().parents[2]
GZIP_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _digest(number: int) -> str:
    return f"sha256:{number:064x}"


@pytest.fixture
def cache(tmp_path):
    with BlobCache.open(tmp_path / "blobs.sqlite") as opened:
        yield opened


def test_remembers_the_blob_a_layer_compressed_to_per_setting(cache):
    cache.record_compressed(_digest(1), "gzip/isal/level=1", _digest(2), 1234, GZIP_TYPE)
    assert cache.compressed_for(_digest(1), "gzip/isal/level=1") == CompressedBlob(
        _digest(2), 1234, GZIP_TYPE
    )
    assert cache.compressed_for(_digest(1), "gzip/isal/level=2") is None
    assert cache.compressed_for(_digest(3), "gzip/isal/level=1") is None


def test_a_later_record_replaces_an_earlier_one(cache):
    cache.record_compressed(_digest(1), "s", _digest(2), 10, GZIP_TYPE)
    cache.record_compressed(_digest(1), "s", _digest(3), 11, GZIP_TYPE)
    assert cache.compressed_for(_digest(1), "s") == CompressedBlob(_digest(3), 11, GZIP_TYPE)


def test_survives_reopening(tmp_path):
    path = tmp_path / "blobs.sqlite"
    with BlobCache.open(path) as first:
        first.record_compressed(_digest(1), "s", _digest(2), 10, GZIP_TYPE)
        first.record_location(_digest(2), "registry.example:5000", "team/app")
    with BlobCache.open(path) as second:
        assert second.compressed_for(_digest(1), "s") is not None
        assert second.locations(_digest(2), "registry.example:5000") == ["team/app"]


def test_locations_are_per_registry_most_recent_first(cache):
    cache.record_location(_digest(1), "r1.example", "a/one")
    time.sleep(0.01)
    cache.record_location(_digest(1), "r1.example", "b/two")
    cache.record_location(_digest(1), "r2.example", "c/three")
    cache.record_location(_digest(2), "r1.example", "d/four")
    assert cache.locations(_digest(1), "r1.example") == ["b/two", "a/one"]
    assert cache.locations(_digest(1), "r2.example") == ["c/three"]
    assert cache.locations(_digest(3), "r1.example") == []


def test_a_wrong_hint_can_be_forgotten(cache):
    cache.record_location(_digest(1), "r1.example", "a/one")
    cache.record_location(_digest(1), "r1.example", "b/two")
    cache.forget_location(_digest(1), "r1.example", "a/one")
    assert cache.locations(_digest(1), "r1.example") == ["b/two"]


@pytest.mark.parametrize(
    "registry", ["user:secret@r.example", "https://r.example", "r.example/path", ""]
)
def test_registry_must_be_a_bare_host_so_no_secret_or_url_is_stored(cache, registry):
    with pytest.raises(ValueError, match="host"):
        cache.record_location(_digest(1), registry, "team/app")


def test_each_table_is_bounded_dropping_the_oldest_records(tmp_path):
    with BlobCache.open(tmp_path / "blobs.sqlite", max_entries=5) as cache:
        for number in range(8):
            cache.record_compressed(_digest(number), "s", _digest(100 + number), 1, GZIP_TYPE)
            cache.record_location(_digest(number), "r.example", f"repo{number}")
        kept = [n for n in range(8) if cache.compressed_for(_digest(n), "s") is not None]
        assert kept == [3, 4, 5, 6, 7]
        located = [n for n in range(8) if cache.locations(_digest(n), "r.example")]
        assert located == [3, 4, 5, 6, 7]
    with sqlite3.connect(tmp_path / "blobs.sqlite") as raw:
        assert raw.execute("SELECT COUNT(*) FROM compressed").fetchone() == (5,)


@settings(max_examples=25, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from(["s1", "s2"]), st.integers(0, 2**40)),
        max_size=30,
    )
)
def test_lookup_returns_the_last_record_for_each_key(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("cache") / "blobs.sqlite"
    expected = {}
    with BlobCache.open(path) as cache:
        for layer, setting, size in records:
            cache.record_compressed(_digest(layer), setting, _digest(size), size, GZIP_TYPE)
            expected[(layer, setting)] = CompressedBlob(_digest(size), size, GZIP_TYPE)
        for (layer, setting), blob in expected.items():
            assert cache.compressed_for(_digest(layer), setting) == blob


def test_uses_a_wal_journal_so_readers_never_block_writers(cache, tmp_path):
    with sqlite3.connect(tmp_path / "blobs.sqlite") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from occystrap.blobcache import BlobCache

    path, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    with BlobCache.open(path) as cache:
        for number in range(300):
            layer = f"sha256:{name}{number:060d}"
            cache.record_compressed(layer, "s", layer + "-gz", number, "t")
            cache.record_location(layer + "-gz", "r.example", name)
            assert cache.compressed_for(layer, "s") is not None
    """
)


def test_two_processes_write_at_once_and_lose_nothing(tmp_path):
    path = tmp_path / "blobs.sqlite"
    go = tmp_path / "go"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), name, str(go)],
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("aaaa", "bbbb")
    ]
    time.sleep(0.5)  # both have started and are waiting
    go.touch()
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
        assert "unusable" not in stderr and "disabled" not in stderr, stderr
    with BlobCache.open(path) as cache:
        for name in ("aaaa", "bbbb"):
            for number in range(300):
                layer = f"sha256:{name}{number:060d}"
                assert cache.compressed_for(layer, "s") == (layer + "-gz", number, "t")
                assert cache.locations(layer + "-gz", "r.example") == [name]


def test_threads_share_one_cache(cache):
    def write(thread: int) -> None:
        for number in range(50):
            cache.record_location(_digest(number), "r.example", f"repo{thread}")

    threads = [threading.Thread(target=write, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number in range(50):
        assert sorted(cache.locations(_digest(number), "r.example")) == [
            f"repo{index}" for index in range(4)
        ]


def test_an_unusable_file_gives_a_cache_that_remembers_nothing(tmp_path, caplog):
    path = tmp_path / "blobs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="occystrap.blobcache"):
        cache = BlobCache.open(path)
    assert isinstance(cache, NullBlobCache)
    assert "continuing without it" in caplog.text
    cache.record_compressed(_digest(1), "s", _digest(2), 1, GZIP_TYPE)
    assert cache.compressed_for(_digest(1), "s") is None


def test_a_failure_mid_run_disables_the_cache_instead_of_failing(cache, tmp_path, caplog):
    cache.record_location(_digest(1), "r.example", "a")
    with sqlite3.connect(tmp_path / "blobs.sqlite") as raw:
        raw.execute("DROP TABLE locations")
    with caplog.at_level(logging.WARNING, logger="occystrap.blobcache"):
        assert cache.locations(_digest(1), "r.example") == []
    assert "disabled" in caplog.text
    cache.record_location(_digest(1), "r.example", "a")  # no error, no effect
    assert cache.locations(_digest(1), "r.example") == []


def test_a_cache_from_another_schema_version_starts_afresh(tmp_path):
    path = tmp_path / "blobs.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE compressed (whatever TEXT)")
        raw.execute("PRAGMA user_version=99")
    with BlobCache.open(path) as cache:
        cache.record_compressed(_digest(1), "s", _digest(2), 1, GZIP_TYPE)
        assert cache.compressed_for(_digest(1), "s") == (_digest(2), 1, GZIP_TYPE)


def test_opening_a_cache_of_this_version_writes_nothing(tmp_path):
    """No write transaction at start-up, so no WAL frame (nor its sync) before the first
    request of a run; what the cache holds is there as before."""
    path = tmp_path / "blobs.sqlite"
    with BlobCache.open(path) as first:
        first.record_compressed(_digest(1), "gzip", _digest(2), 10, GZIP_TYPE)
    with BlobCache.open(path) as again:
        assert os.path.getsize(f"{path}-wal") == 0  # nothing written by opening it
        assert again.compressed_for(_digest(1), "gzip") == CompressedBlob(_digest(2), 10, GZIP_TYPE)


def test_null_cache_for_no_cache_remembers_nothing(tmp_path):
    cache = blobcache.open_blob_cache(False, tmp_path / "blobs.sqlite")
    assert isinstance(cache, NullBlobCache)
    cache.record_compressed(_digest(1), "s", _digest(2), 1, GZIP_TYPE)
    cache.record_location(_digest(2), "r.example", "a")
    assert cache.compressed_for(_digest(1), "s") is None
    assert cache.locations(_digest(2), "r.example") == []
    assert not (tmp_path / "blobs.sqlite").exists()
    assert not isinstance(blobcache.open_blob_cache(True, tmp_path / "on.sqlite"), NullBlobCache)


def test_default_path_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert blobcache.default_path() == tmp_path / "xdg" / "occystrap" / "blobs.sqlite"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert blobcache.default_path() == tmp_path / "home" / ".cache" / "occystrap" / "blobs.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert blobcache.default_path() == tmp_path / "home" / ".cache" / "occystrap" / "blobs.sqlite"


def test_open_creates_a_private_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with BlobCache.open() as cache:
        cache.record_location(_digest(1), "r.example", "a")
    directory = tmp_path / "xdg" / "occystrap"
    assert (directory / "blobs.sqlite").exists()
    assert directory.stat().st_mode & 0o077 == 0
