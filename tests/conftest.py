"""Fixtures for every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_blob_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test (and each occystrap it runs) gets an empty blob cache of its own, so what one
    test pushed never turns into another test's mount, and the user's cache is untouched."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
