"""Google application-default credentials, refreshed through the occystrap chain.

google-auth finds the credentials as gcloud does (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
application-default login, the metadata server); its token refreshes are sent as httpx
requests down the run's chain, so they get its retries, TLS settings and logging.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

import httpx

from occystrap.errors import OccystrapError
from occystrap.middleware.provided import send_small

# google-auth warns when it finds no project; registries and buckets need none.
logging.getLogger("google.auth._default").setLevel(logging.ERROR)

EXTRA_HINT = "install it with: pip install 'occystrap[gcp]' ./plugins/occystrap-gcp"
CREDENTIALS_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
)
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# The lifetime assumed when google-auth says nothing of an expiry.
_DEFAULT_LIFETIME = 300.0


def _google_auth() -> Any:
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport
    except ImportError:
        raise OccystrapError(f"Google Cloud support needs google-auth; {EXTRA_HINT}") from None
    return google.auth


class ApplicationDefault:
    """The application-default credential, its token refreshed on demand."""

    def __init__(self, transport: httpx.BaseTransport, what: str) -> None:
        google_auth = _google_auth()
        self.what = what
        try:
            self._credentials, _ = google_auth.default(scopes=[CLOUD_PLATFORM])
        except google_auth.exceptions.DefaultCredentialsError:
            raise OccystrapError(
                f"{what}: no Google credentials found; {CREDENTIALS_HINT}"
            ) from None
        self._request = _chain_request_class()(transport)
        self._lock = threading.Lock()

    def token(self) -> tuple[str, float]:
        """A fresh access token and its remaining life in seconds."""
        google_auth = _google_auth()
        with self._lock:
            try:
                self._credentials.refresh(self._request)
            except google_auth.exceptions.GoogleAuthError as error:
                raise OccystrapError(
                    f"{self.what}: Google refused to refresh the credentials"
                    f" ({type(error).__name__}); {CREDENTIALS_HINT}"
                ) from None
            token, expiry = self._credentials.token, self._credentials.expiry
        if not token:
            raise OccystrapError(f"{self.what}: Google gave no access token; {CREDENTIALS_HINT}")
        lifetime = _DEFAULT_LIFETIME
        if expiry is not None:  # google-auth keeps naive UTC datetimes
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            lifetime = (expiry - now).total_seconds()
        return token, lifetime


def _chain_request_class() -> type:
    """google-auth's transport interface, answered by the chain (built once google-auth is
    known to be importable)."""
    import google.auth.transport

    class ChainResponse(google.auth.transport.Response):
        def __init__(self, response: httpx.Response) -> None:
            self._response = response

        @property
        def status(self) -> int:
            return self._response.status_code

        @property
        def headers(self) -> dict[str, str]:
            return dict(self._response.headers)

        @property
        def data(self) -> bytes:
            return self._response.content

    class ChainRequest(google.auth.transport.Request):
        def __init__(self, transport: httpx.BaseTransport) -> None:
            self._transport = transport

        def __call__(
            self,
            url: str,
            method: str = "GET",
            body: bytes | None = None,
            headers: dict[str, str] | None = None,
            timeout: float | None = None,
            **kwargs: Any,
        ) -> ChainResponse:
            request = httpx.Request(method, url, content=body, headers=headers)
            try:
                return ChainResponse(send_small(self._transport, request))
            except httpx.HTTPError as error:
                raise google.auth.exceptions.TransportError(str(error)) from error

    return ChainRequest
