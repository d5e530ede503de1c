"""Run-wide settings: what the CLI (or a library caller) decided, in one typed object."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occystrap.credentials import (
    AuthKey,
    Credential,
    CredentialStore,
    format_auth_key,
    parse_auth_key,
)
from occystrap.errors import UsageError
from occystrap.mediatypes import GZIP, ZSTD
from occystrap.middleware.defaults import (
    DEFAULT_QUAY_API,
)
from occystrap.middleware.options import NetworkSettings, checked_path, checked_sequence
from occystrap.platforms import Platform, parse_platform

# The chain (httpx) loads when a command builds it, not for a file-to-file copy.
if TYPE_CHECKING:
    from occystrap.middleware.builder import ChainSettings


@dataclass
class RunSettings(NetworkSettings):
    """The network options (`NetworkSettings`: retries, mirrors, TLS, timeouts...) and
    everything else a run was asked to do."""

    username: str | None = None
    password: str | None = None
    # A copy's two ends may need different accounts; None: --username/--password, else files.
    src_creds: Credential | None = None
    dest_creds: Credential | None = None
    authfile: Path | None = None
    # One end of a copy without TLS verification (skopeo's --src-tls-verify/--dest-tls-verify).
    src_tls_verify: bool = True
    dest_tls_verify: bool = True
    # One end's certificate directory (ca.crt, client.cert/.key), as skopeo's --src-cert-dir.
    src_cert_dir: Path | None = None
    dest_cert_dir: Path | None = None
    # The one platform selector: what --platform (or its aliases --os/--architecture/
    # --variant) asked for. None asked: an index is copied whole, and where one image is
    # needed `platform` is taken (the first asked, else linux/amd64).
    platforms: tuple[Platform, ...] = ()  # strings OS/ARCH[/VARIANT] are taken too
    platform: Platform = field(default_factory=lambda: Platform("linux", "amd64"))
    compression: str = "gzip"
    compression_level: int | None = None  # None: the engine's default (compression.py)
    # --dest-compress: layers stored in another format are recompressed as `compression`
    # (new layer digests and manifest); False keeps every blob byte for byte.
    recompress: bool = False
    use_cache: bool = True  # the blob cache (occystrap/blobcache.py); False for --no-cache
    force: bool = False  # --force: file destinations may replace an existing file
    temp_dir: Path | None = None
    output_format: str = "text"
    debug: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        """Check what a caller gave, so a bad value is one line now, not a traceback later;
        a path given as a string becomes a `Path`, a platform as OS/ARCH[/VARIANT] a
        `Platform`."""
        super().__post_init__()
        if (self.username is None) != (self.password is None):
            raise UsageError("--username and --password go together: give both or neither")
        self.authfile = _optional_path(self.authfile, "authfile")
        self.temp_dir = _optional_path(self.temp_dir, "temp_dir")
        self.platforms = tuple(
            parse_platform(each) if isinstance(each, str) else each
            for each in checked_sequence(self.platforms, "platforms")
        )
        if self.platforms:
            self.platform = self.platforms[0]
        if isinstance(self.platform, str):
            self.platform = parse_platform(self.platform)
        if not all(isinstance(each, Platform) for each in (self.platform, *self.platforms)):
            raise UsageError(
                f"platform takes OS/ARCH[/VARIANT] or a Platform; got {self.platform!r}"
            )
        if self.compression not in (GZIP, ZSTD):
            raise UsageError(f"compression takes gzip or zstd; got {self.compression!r}")
        if self.compression_level is not None:
            # The engines (zstandard, isal) load only where a level is given or data compressed.
            from occystrap import compression

            compression.check_level(self.compression, self.compression_level)
        if self.output_format not in ("text", "json"):
            raise UsageError(f"output_format takes text or json; got {self.output_format!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RunSettings:
        """Settings from the command line's values: each network option by its own name
        (a `NetworkSettings` field and its flag share it), the others one by one."""
        network = {
            option.name: options[option.name]
            for option in fields(NetworkSettings)
            if option.name in options
        }
        if options.get("mirrors"):
            from occystrap.middleware.mirror import split_env_list

            network["mirrors"] = [
                part for value in options["mirrors"] for part in split_env_list(value)
            ]
        network["tls_verify"] = options.get("tls_verify", True) is not False
        network["certs_dirs"] = _paths(options.get("certs_dirs"))
        authfile = options.get("authfile")
        return cls(
            **network,
            username=options["username"],
            password=options["password"],
            src_creds=parse_creds(options.get("src_creds"), "--src-creds"),
            dest_creds=parse_creds(options.get("dest_creds"), "--dest-creds"),
            authfile=Path(str(authfile)) if authfile else None,
            src_tls_verify=options.get("src_tls_verify", True) is not False,
            dest_tls_verify=options.get("dest_tls_verify", True) is not False,
            src_cert_dir=Path(str(options["src_cert_dir"]))
            if options.get("src_cert_dir")
            else None,
            dest_cert_dir=Path(str(options["dest_cert_dir"]))
            if options.get("dest_cert_dir")
            else None,
            platforms=_platform_aliases(options),
            **_dest_compression(options),
            use_cache=not options.get("no_cache", False),
            force=bool(options.get("force", False)),
            temp_dir=options["temp_dir"],
            output_format=options["output_format"],
            debug=options["debug"],
            verbose=options["verbose"],
        )

    @property
    def credential(self) -> Credential | None:
        """--username/--password as one credential; None when not given."""
        return None if self.username is None else Credential(self.username, self.password)

    @property
    def source_credential(self) -> Credential | None:
        """What the command line gives a copy's source: --src-creds, else --username/--password."""
        return self.src_creds or self.credential

    def chain_settings(
        self, registry_hosts: Iterable[str] = (), quay_api_base: str = DEFAULT_QUAY_API
    ) -> ChainSettings:
        """Chain settings for a command naming `registry_hosts`: --username/--password go
        to those hosts only."""
        credential = self.credential
        explicit = {} if credential is None else {host: credential for host in registry_hosts}
        return self._chain_settings(explicit, quay_api_base)

    def copy_chain_settings(
        self,
        source: str | None,
        destination: str | None,
        quay_api_base: str = DEFAULT_QUAY_API,
    ) -> ChainSettings:
        """Chain settings for a copy between two ends, each "HOST[:PORT][/REPOSITORY]" (a
        repository prefix for a bulk copy), or None for a file end: --src-creds go to the
        source, --dest-creds to the destination, --username/--password to either lacking its
        own."""
        return self.ends_chain_settings([source], [destination], quay_api_base)

    def ends_chain_settings(
        self,
        sources: Iterable[str | None],
        destinations: Iterable[str | None],
        quay_api_base: str = DEFAULT_QUAY_API,
        extra: Mapping[str, Credential] | None = None,
    ) -> ChainSettings:
        """`copy_chain_settings` for a run with many sources and destinations (a sync);
        `extra` (a sync file's own credentials, by host) yield to the command line's."""
        sources, destinations = list(sources), list(destinations)
        explicit = copy_credentials(
            *((source, self.source_credential) for source in sources),
            *((destination, self.dest_creds or self.credential) for destination in destinations),
        )
        unverified = [place for place in sources if not self.src_tls_verify] + [
            place for place in destinations if not self.dest_tls_verify
        ]
        hosts = frozenset(place.partition("/")[0].lower() for place in unverified if place)
        cert_dirs = {
            place.partition("/")[0].lower(): directory
            for places, directory in (
                (sources, self.src_cert_dir),
                (destinations, self.dest_cert_dir),
            )
            if directory is not None
            for place in places
            if place
        }
        settings = self._chain_settings({**(extra or {}), **explicit}, quay_api_base)
        return replace(settings, unverified_hosts=hosts, host_cert_dirs=cert_dirs)

    def _chain_settings(
        self, explicit: Mapping[str, Credential], quay_api_base: str
    ) -> ChainSettings:
        from occystrap.middleware.builder import ChainSettings

        return ChainSettings(
            self.network(),
            credentials=CredentialStore.load(explicit=explicit, authfile=self.authfile),
            quay_api_base=quay_api_base,
        )

    def selecting(self, platforms: Iterable[str]) -> RunSettings:
        """These settings with a command's --platform texts as the selection (when any)."""
        chosen = tuple(parse_platform(text) for text in platforms)
        return replace(self, platforms=chosen) if chosen else self

    def one_platform(self, what: str) -> Platform | None:
        """The single platform asked for, None if none; several is an error for `what`."""
        if len(self.platforms) > 1:
            raise UsageError(f"{what} takes one platform, not {len(self.platforms)}")
        return self.platforms[0] if self.platforms else None


def _platform_aliases(options: Mapping[str, Any]) -> tuple[Platform, ...]:
    """--os/--architecture/--variant: one platform, as `--platform OS/ARCH[/VARIANT]`."""
    os_name, architecture = options.get("os_name"), options.get("architecture")
    variant = options.get("variant")
    if not (os_name or architecture or variant):
        return ()
    return (Platform(os_name or "linux", architecture or "amd64", variant or None),)


def _optional_path(value: object, name: str) -> Path | None:
    return None if value is None else checked_path(value, name)


def _dest_compression(options: Mapping[str, Any]) -> dict[str, Any]:
    """--compression/--compression-level, or --dest-compress KIND (and its level), which
    also recompresses layers stored in another format; --dest-compress-keep keeps them."""
    kind, level = options["compression"], options.get("compression_level")
    dest = options.get("dest_compress")
    if dest is None:
        if options.get("dest_compress_level") is not None:
            raise UsageError("--dest-compress-level goes with --dest-compress gzip|zstd")
        return {"compression": kind, "compression_level": level, "recompress": False}
    if options.get("dest_compress_keep"):
        raise UsageError("--dest-compress and --dest-compress-keep exclude each other: pick one")
    dest_level = options.get("dest_compress_level")
    if dest_level is not None and level is not None and dest_level != level:
        raise UsageError("--compression-level and --dest-compress-level differ: give one")
    chosen = dest_level if dest_level is not None else level
    return {"compression": dest, "compression_level": chosen, "recompress": True}


def _paths(value: object) -> tuple[Path, ...] | None:
    """A repeatable path option as paths; None (the default places) when not given."""
    if not value or not isinstance(value, (list, tuple)):
        return None
    return tuple(Path(str(part)) for part in value)


def parse_creds(value: object, flag: str) -> Credential | None:
    """USER:PASS (the password may itself hold ':'), as skopeo's --src-creds takes it."""
    if value is None:
        return None
    username, separator, password = str(value).partition(":")
    if not (username and separator and password):
        raise UsageError(f"{flag} takes USER:PASSWORD; got no ':' or an empty part")
    return Credential(username, password)


def copy_credentials(
    *ends: tuple[str | None, Credential | None],
) -> dict[str, Credential]:
    """Explicit credentials, auths-style keys, for the registry ends of a copy.

    Ends on different hosts, or sharing one credential, are keyed by host. Ends on one host
    with different credentials (or one with none, which then uses the auth files) are keyed
    by their repository, so the more specific one wins
    for its repositories (a request outside both falls back to the host-wide one, if any);
    two different credentials for the very same repository cannot both apply, and are refused.
    """
    located = [(parse_auth_key(where), credential) for where, credential in ends if where]
    explicit: dict[AuthKey, Credential] = {}
    for (host, path), credential in located:
        if credential is None:
            continue
        shared = all(
            other == credential for (other_host, _), other in located if other_host == host
        )
        key = (host, "") if shared else (host, path)
        if explicit.get(key, credential) != credential:
            raise UsageError(
                f"--src-creds and --dest-creds differ but both name {format_auth_key(key)};"
                " copy through tar://FILE in two runs, or use one account for both ends"
            )
        explicit[key] = credential
    return {format_auth_key(key): credential for key, credential in explicit.items()}
