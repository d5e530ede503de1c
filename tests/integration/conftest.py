"""Fixtures for integration tests: real registries (one per auth/TLS mode), a token server,
a fault proxy, a redirect target, and container daemons (dockerd, Podman's API service).
Servers start once per session, at first use; tests isolate themselves with unique
repository and image names (see `unique_repo`).
"""

from __future__ import annotations

import base64
import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration.clouds import (
    GcsEmulator,
    GoogleServiceAccount,
    MotoServer,
    OAuthTokenEndpoint,
    install_cloud_plugins,
)
from tests.integration.daemons import DockerDaemon, PodmanService
from tests.integration.dask_cluster import DaskCluster
from tests.integration.fault_proxy import BlobHost, FaultProxy
from tests.integration.servers import (
    REGISTRY_BINARY,
    SKOPEO_BINARY,
    RegistryServer,
    require_binary,
)
from tests.integration.servers import free_port as _pick_free_port
from tests.integration.token_server import TokenServer

BASIC_USERNAME = "testuser"
BASIC_PASSWORD = "testpass"
_repo_counter = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _integration_binaries() -> None:
    """Fail (never skip) when the real registry or skopeo is absent."""
    require_binary(REGISTRY_BINARY)
    require_binary(SKOPEO_BINARY)


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (e.g. a dead mirror); import `servers.free_port`
    for more than one."""
    return _pick_free_port()


@pytest.fixture
def unique_repo(request) -> str:
    """A repository name no other test in this session uses."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    return f"test/{base[:60]}-{next(_repo_counter)}"


@pytest.fixture(scope="session")
def registry_plain(tmp_path_factory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry-plain")) as server:
        yield server


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory) -> Iterator[RegistryServer]:
    workdir = tmp_path_factory.mktemp("registry-basic")
    with RegistryServer(
        workdir, auth="basic", username=BASIC_USERNAME, password=BASIC_PASSWORD
    ) as server:
        yield server


@pytest.fixture(scope="session")
def registry_no_delete(tmp_path_factory) -> Iterator[RegistryServer]:
    """A registry whose operator left deletes off, as the CNCF registry ships."""
    with RegistryServer(tmp_path_factory.mktemp("registry-no-delete"), deletes=False) as server:
        yield server


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry-tls"), tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def token_server(tmp_path_factory) -> Iterator[TokenServer]:
    with TokenServer(tmp_path_factory.mktemp("token-server")) as server:
        yield server


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory, token_server) -> Iterator[RegistryServer]:
    """Token-auth registry; its `.token_server` counts fetches (call `.reset()` in your test)."""
    workdir = tmp_path_factory.mktemp("registry-token")
    with RegistryServer(workdir, auth="token", token_server=token_server) as server:
        yield server


@pytest.fixture
def blob_host(registry_plain) -> Iterator[BlobHost]:
    """A second loopback origin serving `registry_plain`'s blobs, recording every header."""
    with BlobHost(registry_plain.url) as host:
        yield host


@pytest.fixture
def fault_proxy(registry_plain) -> Iterator[FaultProxy]:
    """A fresh programmable proxy in front of `registry_plain`."""
    with FaultProxy(registry_plain.url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory) -> Iterator[DockerDaemon]:
    """Debian's dockerd on a private socket and storage, started once, stopped by PID."""
    with DockerDaemon(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory) -> Iterator[PodmanService]:
    """Podman's Docker-compatible API on a private socket and storage, stopped by PID."""
    with PodmanService(tmp_path_factory.mktemp("podman")) as service:
        yield service


@pytest.fixture(scope="session")
def cloud_plugins(tmp_path_factory) -> Path:
    """The cloud plug-in distributions installed as a user would; put it on PYTHONPATH."""
    return install_cloud_plugins(tmp_path_factory.mktemp("cloud-plugins"))


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def registry_ecr(tmp_path_factory, moto) -> Iterator[RegistryServer]:
    """A registry that takes the password moto's ECR hands out, as ECR takes its tokens."""
    token = moto.client("ecr").get_authorization_token()["authorizationData"][0]
    username, _, password = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    with RegistryServer(
        tmp_path_factory.mktemp("registry-ecr"), auth="basic", username=username, password=password
    ) as server:
        yield server


GOOGLE_ACCESS_TOKEN = "ya29.occystrap-test-access-token"


@pytest.fixture(scope="session")
def google_account() -> GoogleServiceAccount:
    return GoogleServiceAccount()


@pytest.fixture(scope="session")
def google_oauth(google_account) -> Iterator[OAuthTokenEndpoint]:
    with OAuthTokenEndpoint(GOOGLE_ACCESS_TOKEN, google_account.accepts) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def registry_google(tmp_path_factory) -> Iterator[RegistryServer]:
    """A token-auth registry whose token service takes a Google access token as the password
    of `oauth2accesstoken`, as Artifact Registry's does."""
    workdir = tmp_path_factory.mktemp("registry-google")
    with (
        TokenServer(workdir / "token", "oauth2accesstoken", GOOGLE_ACCESS_TOKEN) as tokens,
        RegistryServer(workdir, auth="token", token_server=tokens) as server,
    ):
        yield server


AZURE_AD_TOKEN = (
    "eyJhbGciOiJub25lIn0.eyJhcHBpZCI6Im9jY3lzdHJhcC10ZXN0In0.c2lnbmF0dXJl"  # JWT-shaped
)
AZURE_CLIENT_SECRET = "azure-client-secret"


@pytest.fixture(scope="session")
def azure_ad(tmp_path_factory) -> Iterator[OAuthTokenEndpoint]:
    """Azure AD in miniature, over TLS (MSAL takes only https authorities); its CA is in
    `azure_ad.ca_file`."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("azure-ad") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    accepts = lambda form: form.get("client_secret") == AZURE_CLIENT_SECRET  # noqa: E731
    with OAuthTokenEndpoint(AZURE_AD_TOKEN, accepts, context) as endpoint:
        endpoint.ca_file = ca_file
        yield endpoint


@pytest.fixture(scope="session")
def registry_azure(tmp_path_factory) -> Iterator[RegistryServer]:
    """A token-auth registry whose token service exchanges the Azure AD token at
    /oauth2/exchange for a refresh token, as ACR's does."""
    workdir = tmp_path_factory.mktemp("registry-azure")
    with (
        TokenServer(workdir / "token") as tokens,
        RegistryServer(workdir, auth="token", token_server=tokens) as server,
    ):
        tokens.exchange_access_token = AZURE_AD_TOKEN
        yield server


@pytest.fixture(scope="session")
def gcs(tmp_path_factory) -> Iterator[GcsEmulator]:
    with GcsEmulator(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    """`dask scheduler` and two `dask worker` processes on loopback, stopped by PID."""
    with DaskCluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster
