"""AWS request signing for requests that travel the occystrap chain.

botocore supplies what the AWS CLI would use: the standard credential chain (environment,
profiles, SSO, instance roles), the region, and the endpoint (`AWS_ENDPOINT_URL` and its
per-service forms honoured). The request itself is an httpx request sent through the run's
one client, so retries, rate limits and logging apply to it like to any other.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from functools import cache
from typing import Any

import httpx

from occystrap.errors import OccystrapError

# botocore's own debug lines (hooks, canonical requests) would drown occystrap's --debug.
logging.getLogger("botocore").setLevel(logging.WARNING)

PAYLOAD_HASH = "X-Amz-Content-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EXTRA_HINT = "install it with: pip install 'occystrap[aws]' ./plugins/occystrap-aws"
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run `aws configure`"
)


def _botocore() -> Any:
    try:
        import botocore.session
    except ImportError:
        raise OccystrapError(f"AWS support needs botocore; {EXTRA_HINT}") from None
    return botocore


class AwsSigner:
    """Signs requests for one AWS service in one region (SigV4)."""

    def __init__(self, service: str, region: str | None, what: str) -> None:
        botocore = _botocore()
        self.service = service
        self.what = what  # for messages: the registry or bucket this is for
        self._session = _session()
        self.region = region or self._session.get_config_variable("region")
        if not self.region:
            raise OccystrapError(
                f"{what}: no AWS region; set AWS_DEFAULT_REGION or a profile's region"
            )
        # Creating a client sends nothing; it resolves the endpoint as the AWS CLI would.
        client = self._session.create_client(service, region_name=self.region)
        self.endpoint_url: str = client.meta.endpoint_url
        self._auth_classes = botocore.auth
        self._lock = threading.Lock()

    def _credentials(self) -> Any:
        with self._lock:
            credentials = self._session.get_credentials()
        if credentials is None:
            raise OccystrapError(f"{self.what}: no AWS credentials found; {CREDENTIALS_HINT}")
        return credentials.get_frozen_credentials()

    def sign(
        self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> dict[str, str]:
        """The headers to send: the given ones plus the signature. The payload is hashed
        from `body` unless the headers already say its hash (`X-Amz-Content-SHA256`: one the
        caller computed, or `UNSIGNED-PAYLOAD` for a stream read once)."""
        from botocore.awsrequest import AWSRequest

        headers = dict(headers or {})
        if not any(name.lower() == PAYLOAD_HASH.lower() for name in headers):
            headers[PAYLOAD_HASH] = hashlib.sha256(body).hexdigest()
        request = AWSRequest(method=method, url=url, headers=headers)
        self._auth_classes.SigV4Auth(self._credentials(), self.service, self.region).add_auth(
            request
        )
        return dict(request.headers.items())

    def signed_request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Request:
        """A signed httpx request with a small body, ready for the chain."""
        return httpx.Request(
            method,
            url,
            headers=self.sign(method, url, headers, body),
            content=body,
            extensions=extensions or {},
        )


@cache
def _session() -> Any:
    """One botocore session per process: credentials are resolved (and refreshed) once."""
    return _botocore().session.get_session()
