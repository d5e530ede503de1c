"""Fixtures the unit tests share: respx patching httpcore (so our chain really runs) and a
registry client over that chain."""

from __future__ import annotations

import pytest
import respx

from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.registry.client import RegistryClient


@pytest.fixture
def mock():
    with respx.mock(using="httpcore", assert_all_called=False) as router:
        yield router


@pytest.fixture
def client():
    """A `RegistryClient` for registry.test over a chain that does not retry."""
    with build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        yield RegistryClient(http, "registry.test")
