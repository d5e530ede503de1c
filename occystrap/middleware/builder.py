"""Assembles the one httpx client of a run: the whole middleware chain, in one visible place.

Outermost first (a request travels down this list, a response back up):

    OciArtifacts  answers oci://HOST/REPO:TAG/NAME with that artifact file, its own requests
                  sent down the rest of the chain
    plug-ins      see every request, each redirect hop included; --middleware ones, then
                  the automatic ones (cloud credentials) the user did not name
    Mirror        rewrites registry reads to mirrors, falls through to the origin
    RegistryAuth  bearer/basic auth for the host actually contacted (mirror or origin)
    QuayAuth      bearer token for the Quay API base only
    Retry         backoff and Retry-After; token fetches and mirror misses pass through it
    RateLimit     every attempt that reaches the network counts
    QuotaObserver reads a registry's pull quota (RateLimit-Remaining) from every answer
    Logging       one line per network attempt
    base          HTTP/2-capable httpx.HTTPTransport (TLS per host from certs.d, proxies, limits)

docs/middleware.md gives the reason for each position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from occystrap import __version__, registries_conf
from occystrap.cancel import Cancellation
from occystrap.credentials import CredentialStore
from occystrap.middleware.defaults import DEFAULT_QUAY_API
from occystrap.middleware.logging import Logging
from occystrap.middleware.mirror import Mirror, mirror_table
from occystrap.middleware.oci import OciArtifacts
from occystrap.middleware.options import NetworkSettings
from occystrap.middleware.plugins import apply_plugins, automatic_specs, parse_middleware_spec
from occystrap.middleware.quay_auth import QuayAuth
from occystrap.middleware.registry_auth import RegistryAuth
from occystrap.middleware.retry import Retry, RetryBudget
from occystrap.middleware.transport import build_base_transport, make_timeout
from occystrap.registries_conf import RegistriesConf

if TYPE_CHECKING:
    from occystrap.middleware.quota import QuotaBook
    from occystrap.middleware.ratelimit import RateLimitPolicy

LOG = logging.getLogger("occystrap.chain")
USER_AGENT = f"occystrap/{__version__}"


@dataclass
class ChainSettings:
    """Everything the chain is built from: the network options (`RunSettings` has them
    too, declared once in `NetworkSettings`) and what a run adds (credentials, hooks,
    shared limiters)."""

    network: NetworkSettings = field(default_factory=NetworkSettings)
    # Its [[registry.mirror]] lists join `network.mirrors`; None: the configuration in
    # effect (registries_conf.active(), read when the chain is built).
    registries: RegistriesConf | None = None
    credentials: CredentialStore = field(default_factory=CredentialStore.empty)
    quay_api_base: str = DEFAULT_QUAY_API
    # Told (host, seconds) before the rate limiter holds a request: the progress display.
    on_rate_wait: Callable[[str, float], None] | None = None
    # Limiters standing for rate_limits (a cluster's shared ones); None: from rate_limits.
    rate_policy: RateLimitPolicy | None = None
    # Where registries' stated pull quotas are recorded (sync); None: not observed.
    quota: QuotaBook | None = None
    # Retries allowed in all, shared by every request of the run; None: only --retries each.
    retry_budget: RetryBudget | None = None
    # The run's stop signal: cancelling it ends the waits between retries at once.
    cancellation: Cancellation = field(default_factory=Cancellation)
    # Hosts ("host[:port]") spoken to without verifying TLS (and plain HTTP if they have no
    # TLS), as registries.conf's insecure ones: one end of a copy's --src/--dest-tls-verify.
    unverified_hosts: frozenset[str] = frozenset()
    # A host's certificate directory given outright ("host[:port]" -> DIR with ca.crt,
    # client.cert, client.key): a copy end's --src-cert-dir/--dest-cert-dir.
    host_cert_dirs: Mapping[str, Path] = field(default_factory=dict)

    def direct(self) -> ChainSettings:
        """These settings talking to the registries themselves: no mirror (of the flags or
        of registries.conf), for what must see the registry (deleting, logging in)."""
        return replace(self, network=replace(self.network, mirrors=()), registries=RegistriesConf())


def _insecure_hosts(
    registries: RegistriesConf, unverified: frozenset[str]
) -> Callable[[str], bool] | None:
    """Whether a host's TLS goes unverified: registries.conf says so, or an end's flag."""
    if not registries.registries and not unverified:
        return None
    return lambda netloc: (
        netloc.lower() in unverified
        or (bool(registries.registries) and registries.insecure_host(netloc))
    )


def build_transport(settings: ChainSettings) -> httpx.BaseTransport:
    """The chain itself, innermost first so the code reads bottom-up like the diagram above."""
    registries = registries_conf.active() if settings.registries is None else settings.registries
    network = settings.network
    transport: httpx.BaseTransport = build_base_transport(
        http2=network.http2,
        parallel=network.parallel,
        ca_cert=network.ca_cert,
        tls_verify=network.tls_verify,
        certs_roots=network.certs_dirs,
        timeout=make_timeout(network.timeout, network.connect_timeout),
        insecure_host=_insecure_hosts(registries, settings.unverified_hosts),
        host_dirs=settings.host_cert_dirs,
        cancellation=settings.cancellation,
    )
    transport = Logging(transport)
    if settings.quota is not None:  # each of these loads only when the run asks for it
        from occystrap.middleware.quota import QuotaObserver

        transport = QuotaObserver(transport, settings.quota)
    policy = settings.rate_policy
    if policy is None and network.rate_limits:
        from occystrap.middleware.ratelimit import parse_rate_limits

        policy = parse_rate_limits(list(network.rate_limits))
    if policy is not None:
        from occystrap.middleware.ratelimit import RateLimit

        transport = RateLimit(transport, policy, settings.on_rate_wait)
    transport = Retry(
        transport,
        retries=network.retries,
        sleep=settings.cancellation.sleep,
        deadline=network.deadline,
        budget=settings.retry_budget,
    )
    transport = QuayAuth(transport, api_base=settings.quay_api_base, token=network.quay_token)
    transport = RegistryAuth(transport, settings.credentials)
    mirrors = mirror_table(network.mirrors, registries)
    if mirrors:
        transport = Mirror(transport, mirrors)
    specs = [parse_middleware_spec(spec) for spec in network.middlewares]
    transport = apply_plugins(transport, specs + automatic_specs([name for name, _ in specs]))
    return OciArtifacts(transport, insecure=network.insecure, registries=registries)


class ChainClient(httpx.Client):
    """An httpx.Client that keeps a handle on its middleware chain, for run statistics."""

    def __init__(self, chain: httpx.BaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=chain, **kwargs)
        self.chain = chain

    def take_retry(self) -> bool:
        """Whether a retry made outside the chain (an upload restart) may go ahead: the
        chain's Retry middleware draws it on the run's budget and counts it."""
        return all(
            node.take_retry() for node in chain_members(self.chain) if isinstance(node, Retry)
        )

    def retries_made(self) -> int:
        """How many retries the chain's Retry middleware made, for the summary line."""
        return sum(
            node.retries_made for node in chain_members(self.chain) if isinstance(node, Retry)
        )


def build_client(settings: ChainSettings) -> ChainClient:
    """The single client every registry, token and Quay call of a run goes through."""
    chain = build_transport(settings)
    LOG.debug("middleware chain: %s", describe_chain(chain))
    return ChainClient(
        chain,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        timeout=make_timeout(settings.network.timeout, settings.network.connect_timeout),
        follow_redirects=True,
        trust_env=False,  # proxies are routed by the base transport
    )


def chain_members(transport: httpx.BaseTransport) -> Iterator[httpx.BaseTransport]:
    """Every transport of the chain, outermost first."""
    node: httpx.BaseTransport | None = transport
    while node is not None:
        yield node
        node = getattr(node, "next", None)


def describe_chain(transport: httpx.BaseTransport) -> str:
    """`Outer -> ... -> base`, for --debug output."""
    return " -> ".join(type(node).__name__ for node in chain_members(transport))
