"""Quay API authentication: a bearer token for the REST API, and nothing else.

The registry half of Quay (`/v2/`) is handled by RegistryAuth; the API token must never
reach it, nor any other host.
"""

from __future__ import annotations

import httpx

from occystrap.errors import QuayAuthError
from occystrap.middleware.base import Middleware
from occystrap.middleware.registry_auth import request_with_header

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_and_path(url: httpx.URL) -> tuple[str, str, int | None, str]:
    scheme = url.scheme.lower()
    return (scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme), url.path)


class QuayAuth(Middleware):
    """Adds the Quay API token under the API base URL and turns an API 401 into advice."""

    def __init__(
        self,
        next_transport: httpx.BaseTransport,
        api_base: str = "https://quay.io/api/v1",
        token: str | None = None,
    ) -> None:
        super().__init__(next_transport)
        *self._base_origin, base_path = _origin_and_path(httpx.URL(api_base))
        self._base_path = base_path.rstrip("/")
        self._token = token

    def _is_api_request(self, url: httpx.URL) -> bool:
        *origin, path = _origin_and_path(url)
        if origin != self._base_origin:
            return False
        return path == self._base_path or path.startswith(self._base_path + "/")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._is_api_request(request.url):
            return self.next.handle_request(request)
        if self._token:
            request = request_with_header(request, "Authorization", f"Bearer {self._token}")
        response = self.next.handle_request(request)
        if response.status_code == 401:
            response.close()
            raise QuayAuthError(
                "the Quay API token is missing or wrong; set --quay-token or OCCYSTRAP_QUAY_TOKEN"
            )
        return response
