"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from occystrap import registries_conf

# Property tests check what code does, not how fast: hypothesis' default 200 ms deadline per
# example turned a busy CI machine into failures (test_manifest's arbitrary-JSON test failed
# that way, and passed 20 000 examples unhurried).
settings.register_profile("occystrap", deadline=None)
settings.load_profile("occystrap")


@pytest.fixture(autouse=True)
def _private_blob_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test (and each occystrap it runs) gets an empty blob cache of its own, so what one
    test pushed never turns into another test's mount, and the user's cache is untouched."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _private_configuration(tmp_path_factory, monkeypatch) -> Iterator[None]:
    """No test (nor any occystrap, skopeo or podman it runs) reads the machine's
    /etc/containers/registries.conf(.d) or the user's ~/.config: podman's Debian package
    installs search registries and short-name aliases there, which would turn a bare name
    into a request to the Internet. A test wanting a configuration writes its own."""
    home = tmp_path_factory.mktemp("config")
    empty = home / "registries.conf"
    empty.write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(empty))
    monkeypatch.setenv("OCCYSTRAP_REGISTRIES_CONF_D", "")
    monkeypatch.delenv("OCCYSTRAP_CONFIG", raising=False)
    yield
    registries_conf.activate(registries_conf.RegistriesConf())  # the CLI, run in-process, set it
