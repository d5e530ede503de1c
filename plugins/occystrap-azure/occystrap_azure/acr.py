"""The `acr` plug-in: Azure Container Registry credentials from an Azure AD identity.

ACR (`NAME.azurecr.io`) does not take the Azure AD token itself: it is exchanged at the
registry's `/oauth2/exchange` for an ACR refresh token, which RegistryAuth then trades at
the registry's token realm for access tokens, scope by scope (the usual refresh-token
grant). Both steps go down the chain. Installed, the plug-in is automatic for `*.azurecr.io`;
`--middleware acr:hosts=HOST;HOST` adds others.
"""

from __future__ import annotations

import re

import httpx

from occystrap.credentials import Credential
from occystrap.errors import OccystrapError
from occystrap.middleware.challenge import parse_challenges
from occystrap.middleware.extensions import NO_AUTH, RETRY_UNSAFE
from occystrap.middleware.provided import ProvidedCredentials, hosts_option, send_small
from occystrap_azure.identity import AzureIdentity

ACR_HOST = re.compile(r"[a-z0-9-]+\.azurecr\.(?:io|cn|us)")
# ACR's refresh tokens live three hours; never trust one longer than its AAD token.
_REFRESH_TOKEN_LIFETIME = 3 * 3600.0


class AcrCredentials(ProvidedCredentials):
    def __init__(self, next_transport: httpx.BaseTransport, hosts: frozenset[str]) -> None:
        super().__init__(next_transport)
        self.hosts = hosts
        self._identity: AzureIdentity | None = None

    def claims(self, host: str) -> bool:
        return host in self.hosts or ACR_HOST.fullmatch(host) is not None

    def fetch(self, host: str, url: httpx.URL) -> tuple[Credential, float]:
        if self._identity is None:
            self._identity = AzureIdentity(self.next, f"Azure registry {host}")
        exchange_url = self._exchange_url(url)
        aad_token, lifetime = self._identity.token()
        request = httpx.Request(
            "POST",
            exchange_url,
            data={"grant_type": "access_token", "service": host, "access_token": aad_token},
            extensions={RETRY_UNSAFE: True},
        )
        response = send_small(self.next, request)
        refresh_token = None
        if response.status_code == 200:
            try:
                refresh_token = response.json().get("refresh_token")
            except (ValueError, AttributeError):
                refresh_token = None
        if not isinstance(refresh_token, str) or not refresh_token:
            raise OccystrapError(
                f"{host} refused to exchange the Azure AD token at {exchange_url}: HTTP"
                f" {response.status_code}; check that the identity has a role on the registry"
            )
        credential = Credential(None, None, identity_token=refresh_token)
        return credential, min(lifetime, _REFRESH_TOKEN_LIFETIME)

    def _exchange_url(self, url: httpx.URL) -> str:
        """`/oauth2/exchange` beside the token realm the registry names in its challenge
        (the registry itself, for ACR), as the Azure CLI finds it."""
        probe = httpx.Request("GET", url.copy_with(path="/v2/", query=None))
        probe.extensions[NO_AUTH] = True
        response = send_small(self.next, probe)
        for challenge in parse_challenges(", ".join(response.headers.get_list("www-authenticate"))):
            realm = challenge.params.get("realm")
            if challenge.scheme == "bearer" and realm:
                return str(httpx.URL(realm).copy_with(path="/oauth2/exchange", query=None))
        raise OccystrapError(
            f"{url.host} did not answer with a bearer token challenge; is it an Azure registry?"
        )


def acr_middleware(next_transport: httpx.BaseTransport, options: dict[str, str]) -> AcrCredentials:
    """Plug-in factory: `acr[:hosts=HOST;HOST]`."""
    return AcrCredentials(next_transport, hosts_option(options))
