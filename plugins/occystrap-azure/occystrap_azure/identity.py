"""Azure AD tokens from azure-identity, with its HTTP sent through the occystrap chain.

azure-identity's DefaultAzureCredential finds the credential as the Azure CLI and SDKs do
(AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET or a certificate, workload identity,
managed identity, `az login`); every request it makes goes to azure-core's transport, which
here is the run's chain, so Azure AD is called with its retries, TLS settings and logging.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from occystrap.errors import OccystrapError
from occystrap.middleware.provided import send_small

EXTRA_HINT = "install it with: pip install 'occystrap[azure]' ./plugins/occystrap-azure"
CREDENTIALS_HINT = "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run `az login`"
# The audience ACR accepts for the token exchange.
MANAGEMENT_SCOPE = "https://management.azure.com/.default"

# azure-identity logs each credential it tries; occystrap says what failed in one line.
logging.getLogger("azure").setLevel(logging.ERROR)


def _azure() -> Any:
    try:
        import azure.core.exceptions
        import azure.core.pipeline.transport
        import azure.core.rest._http_response_impl
        import azure.core.utils
        import azure.identity
    except ImportError:
        raise OccystrapError(f"Azure support needs azure-identity; {EXTRA_HINT}") from None
    return azure


class AzureIdentity:
    """An Azure AD access token for ACR, refreshed on demand."""

    def __init__(self, transport: httpx.BaseTransport, what: str) -> None:
        azure = _azure()
        self.what = what
        self._credential = azure.identity.DefaultAzureCredential(
            transport=_chain_transport_class()(transport),
            disable_instance_discovery=_custom_authority(azure.identity),
        )
        self._lock = threading.Lock()

    def token(self) -> tuple[str, float]:
        """An access token and its remaining life in seconds."""
        azure = _azure()
        with self._lock:
            try:
                access = self._credential.get_token(MANAGEMENT_SCOPE)
            except azure.core.exceptions.ClientAuthenticationError:
                raise OccystrapError(
                    f"{self.what}: no usable Azure credential; {CREDENTIALS_HINT}"
                ) from None
        return access.token, access.expires_on - time.time()


def _custom_authority(identity: Any) -> bool:
    """Whether AZURE_AUTHORITY_HOST names an authority outside Microsoft's clouds (Azure
    Stack, a proxy): it is then trusted as given rather than looked up in Microsoft's list
    of instances, which it would not be in."""
    host = os.environ.get("AZURE_AUTHORITY_HOST", "")
    known = {
        str(value).removeprefix("https://").rstrip("/")
        for name, value in vars(identity.AzureAuthorityHosts).items()
        if not name.startswith("_")
    }
    return bool(host) and host.removeprefix("https://").rstrip("/") not in known


def _chain_transport_class() -> type:
    """azure-core's transport interface, answered by the chain."""
    from azure.core.pipeline.transport import HttpTransport
    from azure.core.rest._http_response_impl import HttpResponseImpl
    from azure.core.utils import case_insensitive_dict

    class ChainTransport(HttpTransport):
        def __init__(self, transport: httpx.BaseTransport) -> None:
            self._transport = transport

        def send(self, request: Any, **kwargs: Any) -> Any:
            body = request.content  # bytes, text, or a form (a dict) to encode
            if isinstance(body, dict):
                body = urlencode(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            sent = httpx.Request(
                request.method, request.url, headers=dict(request.headers), content=body
            )
            response = send_small(self._transport, sent)
            answer = HttpResponseImpl(
                request=request,
                internal_response=response,
                status_code=response.status_code,
                reason=response.reason_phrase,
                content_type=response.headers.get("content-type"),
                headers=case_insensitive_dict(response.headers),
                stream_download_generator=None,
            )
            answer._content = response.content  # read whole: token answers are small
            return answer

        def open(self) -> None:
            pass

        def close(self) -> None:
            pass  # the chain belongs to the run

        def __enter__(self) -> ChainTransport:
            return self

        def __exit__(self, *exc_info: Any) -> None:
            pass

    return ChainTransport
