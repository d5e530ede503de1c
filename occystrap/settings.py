"""Run-wide settings: what the CLI (or a library caller) decided, in one typed object."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from occystrap.credentials import Credential, CredentialStore
from occystrap.errors import UsageError
from occystrap.middleware.builder import DEFAULT_QUAY_API, ChainSettings
from occystrap.middleware.mirror import split_env_list
from occystrap.registry.manifest import Platform


@dataclass
class RunSettings:
    retries: int = 3
    rate_limits: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    middlewares: tuple[str, ...] = ()
    quay_token: str | None = None
    http2: bool = True
    ca_cert: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    platform: Platform = field(default_factory=lambda: Platform("linux", "amd64"))
    parallel: int = 4
    compression: str = "gzip"
    temp_dir: Path | None = None
    output_format: str = "text"
    debug: bool = False
    verbose: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> RunSettings:
        if (options.get("username") is None) != (options.get("password") is None):
            raise UsageError("--username and --password go together: give both or neither")
        mirrors = tuple(part for value in options["mirrors"] for part in split_env_list(value))
        return cls(
            retries=options["retries"],
            rate_limits=tuple(options["rate_limits"]),
            mirrors=mirrors,
            middlewares=tuple(options["middlewares"]),
            quay_token=options["quay_token"],
            http2=options["http2"],
            ca_cert=options["ca_cert"],
            insecure=options["insecure"],
            username=options["username"],
            password=options["password"],
            platform=Platform(options["os_name"], options["architecture"], options["variant"]),
            parallel=options["parallel"],
            compression=options["compression"],
            temp_dir=options["temp_dir"],
            output_format=options["output_format"],
            debug=options["debug"],
            verbose=options["verbose"],
        )

    def chain_settings(
        self, registry_hosts: Iterable[str] = (), quay_api_base: str = DEFAULT_QUAY_API
    ) -> ChainSettings:
        """Chain settings for a command naming `registry_hosts`: --username/--password go
        to those hosts only."""
        explicit = {}
        if self.username is not None:
            credential = Credential(self.username, self.password)
            explicit = {host: credential for host in registry_hosts}
        return ChainSettings(
            retries=self.retries,
            rate_limits=self.rate_limits,
            mirrors=self.mirrors,
            credentials=CredentialStore.load(explicit=explicit),
            quay_api_base=quay_api_base,
            quay_token=self.quay_token,
            http2=self.http2,
            parallel=self.parallel,
            ca_cert=self.ca_cert,
            middlewares=self.middlewares,
        )

    def with_platform(self, os: str | None, arch: str | None, variant: str | None) -> RunSettings:
        platform = Platform(
            os or self.platform.os,
            arch or self.platform.architecture,
            variant if variant is not None else self.platform.variant,
        )
        return replace(self, platform=platform)
