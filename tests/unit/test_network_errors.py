"""Network failures the user must fix are one line naming host:port, and are not retried."""

from __future__ import annotations

import socket

import httpx
import pytest
from click.testing import CliRunner

from occystrap.cli import main
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.middleware.transport import HostNotFoundError
from occystrap.registry.errors import network_error_message


@pytest.fixture
def unresolvable(monkeypatch) -> list[str]:
    """Every lookup of *.invalid fails as an offline resolver would; returns the names asked."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".invalid"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_an_unresolvable_host_is_not_retried(unresolvable):
    with (
        build_client(ChainSettings(NetworkSettings(retries=3))) as client,
        pytest.raises(HostNotFoundError) as e,
    ):
        client.get("https://registry.invalid/v2/")
    assert unresolvable == ["registry.invalid"]
    assert "cannot resolve the host name registry.invalid" in str(e.value)
    assert "proxy" in str(e.value)


def test_the_cli_says_the_host_cannot_be_resolved(unresolvable, tmp_path):
    result = CliRunner().invoke(
        main, ["process", "registry://registry.invalid/a/b:v1", f"tar://{tmp_path / 'x.tar'}"]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0
    assert len(lines) == 1, result.output
    assert "cannot resolve the host name registry.invalid" in lines[0]
    assert "--insecure" not in lines[0] and "--retries" not in lines[0]


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (httpx.ConnectError("refused"), ["registry.test:5000", "--insecure", "--connect-timeout"]),
        (httpx.ReadTimeout("silent"), ["registry.test:5000", "--timeout"]),
        (httpx.TooManyRedirects("loop"), ["too many redirects", "registry.test:5000"]),
    ],
)
def test_network_errors_name_host_and_port(error, fragments):
    error.request = httpx.Request("GET", "https://registry.test:5000/v2/")
    message = network_error_message(error)
    for fragment in fragments:
        assert fragment in message


def test_plain_http_answered_by_a_tls_server_suggests_dropping_insecure():
    error = httpx.RemoteProtocolError(
        "illegal status line", request=httpx.Request("GET", "http://r.test/v2/")
    )
    assert "drop --insecure" in network_error_message(error)
    assert "r.test:80" in network_error_message(error)
