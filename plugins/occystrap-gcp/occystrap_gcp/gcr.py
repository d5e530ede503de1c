"""The `gcr` plug-in: Artifact Registry (`REGION-docker.pkg.dev`) and Container Registry
(`gcr.io`, `REGION.gcr.io`) credentials from Google's application-default credentials.

These registries take an OAuth2 access token as the password of user `oauth2accesstoken`
at their token realm; RegistryAuth does the rest of the usual bearer flow. Installed, the
plug-in is automatic for those host names; `--middleware gcr:hosts=HOST;HOST` adds others.
"""

from __future__ import annotations

import re

import httpx

from occystrap.credentials import Credential
from occystrap.middleware.provided import ProvidedCredentials, hosts_option
from occystrap_gcp.google_auth import ApplicationDefault

GOOGLE_REGISTRY_HOST = re.compile(r"(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io)")
USERNAME = "oauth2accesstoken"


class GoogleRegistryCredentials(ProvidedCredentials):
    def __init__(self, next_transport: httpx.BaseTransport, hosts: frozenset[str]) -> None:
        super().__init__(next_transport)
        self.hosts = hosts
        self._adc: ApplicationDefault | None = None

    def claims(self, host: str) -> bool:
        return host in self.hosts or GOOGLE_REGISTRY_HOST.fullmatch(host) is not None

    def fetch(self, host: str, url: httpx.URL) -> tuple[Credential, float]:
        if self._adc is None:
            self._adc = ApplicationDefault(self.next, f"Google registry {host}")
        token, lifetime = self._adc.token()
        return Credential(USERNAME, token), lifetime


def gcr_middleware(
    next_transport: httpx.BaseTransport, options: dict[str, str]
) -> GoogleRegistryCredentials:
    """Plug-in factory: `gcr[:hosts=HOST;HOST]`."""
    return GoogleRegistryCredentials(next_transport, hosts_option(options))
