"""The `ecr` plug-in: Amazon ECR registry credentials from the standard AWS credential chain.

ECR registries (`ACCOUNT.dkr.ecr.REGION.amazonaws.com`) take Basic auth with user `AWS` and a
password from the ECR API's GetAuthorizationToken, valid for 12 hours. The plug-in asks for
one when the run first talks to such a registry, shares it for the whole run, and asks again
shortly before it expires or when the registry refuses it. The call to the ECR API is signed
with SigV4 and goes through the rest of the chain.

Installed, it is automatic for ECR host names; `--middleware ecr:hosts=HOST;HOST,region=R`
adds registries under other names (a private endpoint, a test registry).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time

import httpx

from occystrap.credentials import Credential
from occystrap.errors import OccystrapError
from occystrap.middleware.extensions import RETRY_UNSAFE
from occystrap.middleware.provided import ProvidedCredentials, hosts_option, send_small
from occystrap_aws.signing import AwsSigner

ECR_HOST = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
)
_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
# An expiry already past by our clock (skew) is trusted for this long rather than never.
_MINIMUM_LIFETIME = 60.0


class EcrCredentials(ProvidedCredentials):
    """Supplies `AWS:<token>` for ECR registries."""

    def __init__(
        self, next_transport: httpx.BaseTransport, hosts: frozenset[str], region: str | None
    ) -> None:
        super().__init__(next_transport)
        self.hosts = hosts
        self.region = region
        self._signers: dict[str | None, AwsSigner] = {}

    def claims(self, host: str) -> bool:
        return host in self.hosts or ECR_HOST.fullmatch(host) is not None

    def fetch(self, host: str, url: httpx.URL) -> tuple[Credential, float]:
        match = ECR_HOST.fullmatch(host)
        region = self.region or (match.group("region") if match else None)
        if region not in self._signers:
            self._signers[region] = AwsSigner("ecr", region, f"ECR registry {host}")
        signer = self._signers[region]
        body = json.dumps({"registryIds": [match.group("account")]} if match else {}).encode()
        request = signer.signed_request(
            "POST",
            signer.endpoint_url + "/",
            {"X-Amz-Target": _TARGET, "Content-Type": "application/x-amz-json-1.1"},
            body,
            {RETRY_UNSAFE: True},
        )
        response = send_small(self.next, request)
        if response.status_code != 200:
            raise OccystrapError(
                f"ECR refused an authorization token for {host}: HTTP {response.status_code}"
                f" {_aws_error(response)}; check the AWS credentials and the region"
            )
        return _parse_token(response, host)


def _aws_error(response: httpx.Response) -> str:
    """The error code AWS names in its JSON answer (never the request's secrets)."""
    try:
        document = response.json()
        return str(document.get("__type") or document.get("message") or "").split("#")[-1]
    except (ValueError, AttributeError):
        return response.reason_phrase


def _parse_token(response: httpx.Response, host: str) -> tuple[Credential, float]:
    try:
        data = response.json()["authorizationData"][0]
        username, _, password = (
            base64.b64decode(data["authorizationToken"], validate=True).decode().partition(":")
        )
        lifetime = float(data.get("expiresAt") or 0) - time.time()
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise OccystrapError(f"ECR gave an unreadable authorization token for {host}") from None
    if not (username and password):
        raise OccystrapError(f"ECR gave an authorization token without a password for {host}")
    return Credential(username, password), max(lifetime, _MINIMUM_LIFETIME)


def ecr_middleware(next_transport: httpx.BaseTransport, options: dict[str, str]) -> EcrCredentials:
    """Plug-in factory: `ecr[:hosts=HOST;HOST,region=REGION]`."""
    hosts = hosts_option(options, also=("region",))
    return EcrCredentials(next_transport, hosts, options.get("region") or None)
