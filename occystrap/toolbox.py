"""The everyday registry commands: tags, digest, manifest, config, delete, login, logout.

Each one makes a handful of requests through the run's one client (auth, retry, rate limit;
mirrors for reads) and returns what the CLI prints, so library callers get the same answers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from occystrap import registries_conf
from occystrap.endpoints import parse_uri, redact
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import OccystrapError, RegistryError, UsageError
from occystrap.middleware.builder import build_client
from occystrap.registry.client import RegistryClient
from occystrap.registry.reference import HOST_PATTERN

# Each command imports what only it needs: `digest` and `tags` load the chain and the
# registry client, not the image model, the copy pipeline or the credential files' writer.
if TYPE_CHECKING:
    from occystrap.credentials import Credential
    from occystrap.image import Image
    from occystrap.platforms import Platform
    from occystrap.registry.inspect import PickedImage
    from occystrap.registry.referrers import ReferrerTree
    from occystrap.settings import RunSettings

LOG = logging.getLogger("occystrap.toolbox")

# -- references and the client ------------------------------------------------------------


def registry_uri(text: str) -> RegistryURI:
    """An IMAGE_URI argument, which must be registry://."""
    uri = parse_uri(text)
    if not isinstance(uri, RegistryURI):
        raise UsageError(
            f"{uri.shown!r} is not a registry image: expected registry://HOST/NAME[:TAG]"
        )
    return uri


def repository_uri(text: str) -> RegistryURI:
    """A REPOSITORY_URI argument: registry://HOST/NAME, with no tag or digest."""
    uri = registry_uri(text)
    last_component = uri.shown.partition("://")[2].partition("?")[0].rpartition("/")[2]
    if ":" in last_component or "@" in last_component:
        raise UsageError(
            f"{uri.shown!r} names an image, not a repository: expected registry://HOST/NAME"
            " without :TAG or @DIGEST"
        )
    return uri


def found_image(settings: RunSettings, text: str) -> RegistryURI:
    """An IMAGE_URI argument to read: for a short name with several search registries to
    try (short-name-mode permissive or disabled), the first that has the image."""
    from occystrap.endpoints.registry import head_manifest

    def head(candidate: RegistryURI) -> None:
        with registry_client(settings, candidate) as client:
            head_manifest(client, candidate)

    return registry_uri(text).found(head, with_credential=settings.credential is not None)


def asked_platform(settings: RunSettings, uri: RegistryURI, what: str) -> Platform | None:
    """The platform asked for: --platform (or its aliases), else the URI's
    ?os=&arch=&variant=; None when neither names one."""
    return settings.one_platform(what) or uri.platform


@contextmanager
def registry_client(
    settings: RunSettings, uri: RegistryURI, *, use_mirrors: bool = True
) -> Iterator[RegistryClient]:
    """A RegistryClient for `uri`'s registry over a fresh chain; `use_mirrors=False` for
    anything that must see the registry itself (deleting, logging in)."""
    registry = uri.reference.registry
    chain = settings.chain_settings([registry])
    if not use_mirrors:
        chain = chain.direct()
    insecure = settings.insecure if uri.insecure is None else uri.insecure
    with build_client(chain) as http:
        yield RegistryClient(http, registry, insecure=insecure)


def pick(client: RegistryClient, uri: RegistryURI, platform: Platform) -> PickedImage:
    """The image `uri` names: itself, or an index's entry for `platform` (manifest and config
    only; no layer is read)."""
    from occystrap.endpoints.registry_images import RegistrySource
    from occystrap.image import ImageIndex
    from occystrap.manifest import select_platform
    from occystrap.registry.inspect import PickedImage

    item = RegistrySource(client, uri.reference, None).read()
    if isinstance(item, ImageIndex):
        entry = select_platform(item, platform.os, platform.architecture, platform.variant)
        return PickedImage(item.read_entry(entry), item.digest)
    return PickedImage(item)


# -- read-only commands -------------------------------------------------------------------


def tags(settings: RunSettings, repository: str, page_size: int | None = None) -> list[str]:
    """Every tag of REPOSITORY (registry://HOST/NAME), in the registry's order, all pages;
    of a short name, those of the first search registry whose first page answers, as reads
    find an image. A later page failing is that registry's error: listing another
    registry's tags instead would pass off a different repository as this one."""

    def first_page(
        candidate: RegistryURI, opened: ExitStack
    ) -> tuple[list[str], Iterator[list[str]]]:
        client = opened.enter_context(registry_client(settings, candidate))
        pages = client.tag_pages(candidate.reference.repository, page_size)
        return next(pages), pages  # the client stays open to read the other pages

    credential = settings.credential is not None
    with repository_uri(repository).first_held(first_page, with_credential=credential) as found:
        first, rest = found
        return first + [tag for page in rest for tag in page]


def catalog(
    settings: RunSettings,
    registry: str,
    pattern: str | None = None,
    page_size: int | None = None,
) -> list[str]:
    """Every repository REGISTRY (registry://HOST[/PREFIX]) lists in its catalog, all pages;
    only those under PREFIX, and matching the glob `pattern` when given."""
    scheme, _, rest = registry.partition("://")
    body, _, query = rest.partition("?")
    host, _, prefix = body.partition("/")
    if scheme != "registry" or not HOST_PATTERN.fullmatch(host):
        raise UsageError(
            f"{redact(registry)!r} is not a registry: expected registry://HOST[/PREFIX]"
        )
    uri = registry_uri(f"registry://{host}/catalog{'?' + query if query else ''}")
    prefix = prefix.strip("/")
    with registry_client(settings, uri) as client:
        names = client.list_repositories(page_size)
    return [
        name
        for name in names
        if (not prefix or name == prefix or name.startswith(prefix + "/"))
        and (pattern is None or fnmatch.fnmatchcase(name, pattern))
    ]


def ratelimit(settings: RunSettings, image: str) -> dict:
    """The pull quota IMAGE's registry states on a HEAD of its manifest (which Docker Hub
    does not count): limit, remaining, window in seconds; None where it states none."""
    from occystrap.middleware.quota import QuotaBook

    uri = found_image(settings, image)
    reference = uri.reference
    book = QuotaBook()
    chain = dataclasses.replace(settings.chain_settings([reference.registry]), quota=book)
    insecure = settings.insecure if uri.insecure is None else uri.insecure
    with build_client(chain) as http:
        client = RegistryClient(http, reference.registry, insecure=insecure)
        client.head_manifest(reference.repository, reference.reference)
    reading = book.reading(reference.registry)
    return {
        "registry": reference.registry,
        "limit": reading.limit if reading else None,
        "remaining": reading.remaining if reading else None,
        "window": reading.window if reading else None,
    }


def digest(settings: RunSettings, image: str) -> str:
    """The manifest digest IMAGE names: an index's own, or with a platform asked for that
    entry's."""
    uri = found_image(settings, image)
    reference = uri.reference
    wanted = asked_platform(settings, uri, "digest")
    with registry_client(settings, uri) as client:
        if wanted is None:  # the digest of the bytes, as skopeo prints: headers can lie
            return client.get_manifest(reference.repository, reference.reference)[2]
        picked = pick(client, uri, wanted)
    if picked.index_digest is None:
        _check_single_platform(uri.shown, picked.image, wanted)
    return picked.manifest_digest


def _check_single_platform(shown: str, image: Image, wanted: Platform) -> None:
    """A plain image manifest answers --platform only when its config says that platform."""
    from occystrap.manifest import normalise_architecture

    config = image.config_json
    os_name, architecture = str(config.get("os", "")), str(config.get("architecture", ""))
    variant = config.get("variant")
    matches = (
        os_name.lower() == wanted.os.lower()
        and normalise_architecture(architecture) == normalise_architecture(wanted.architecture)
        and (wanted.variant is None or (variant or "").lower() == wanted.variant.lower())
    )
    if not matches:
        have = "/".join(part for part in (os_name, architecture, variant) if part)
        raise OccystrapError(
            f"{shown} is a single-platform image for {have}, not {wanted}; drop --platform"
        )


def manifest(settings: RunSettings, image: str) -> bytes:
    """IMAGE's manifest exactly as served (with a platform asked for, that entry of an index,
    as it is)."""
    from occystrap.endpoints.registry_images import RegistrySource
    from occystrap.graph import platform_root

    uri = found_image(settings, image)
    reference = uri.reference
    wanted = asked_platform(settings, uri, "manifest")
    with registry_client(settings, uri) as client:
        source = RegistrySource(client, reference, None)
        return platform_root(source, [wanted] if wanted else []).raw


def config(settings: RunSettings, image: str) -> bytes:
    """IMAGE's config blob exactly as stored (its sha256 is the config digest); for an index,
    the config of the platform asked for, else linux/amd64."""
    uri = found_image(settings, image)
    wanted = asked_platform(settings, uri, "config") or settings.platform
    with registry_client(settings, uri) as client:
        return pick(client, uri, wanted).image.config


def referrers(settings: RunSettings, image: str, artifact_type: str | None = None) -> ReferrerTree:
    """What refers to the manifest IMAGE (registry:// or oci-layout://) names (an index's own
    digest for a multi-platform image), recursively; `artifact_type` keeps only that type at
    the first level."""
    from occystrap.manifest import Descriptor
    from occystrap.registry.referrers import ReferrerTree, discover
    from occystrap.stores import open_source

    with open_source(settings, parse_uri(image), "referrers") as source:
        raw, media_type, digest = source.root
        found = discover(source.store, digest, artifact_type)
    endpoint = source.endpoint
    name = str(endpoint.reference) if isinstance(endpoint, RegistryURI) else str(endpoint)
    return ReferrerTree(name, Descriptor(media_type, digest, len(raw)), found)


# -- delete -------------------------------------------------------------------------------


def delete(settings: RunSettings, image: str) -> str:
    """Delete the manifest a tag or digest names (a tag resolved at the registry itself, never a
    mirror); returns HOST/NAME@DIGEST of what was deleted."""
    uri = registry_uri(image)
    if uri.alternatives:
        raise UsageError(
            f"{uri.shown!r} could be at any of several search registries; name the image to"
            " delete in full"
        )
    reference = uri.reference
    with registry_client(settings, uri, use_mirrors=False) as client:
        target = (
            reference.digest
            or client.head_manifest(reference.repository, reference.reference).digest
        )
        client.delete_manifest(reference.repository, target)
    return f"{reference.registry}/{reference.repository}@{target}"


# -- login / logout -----------------------------------------------------------------------


def login_host(text: str) -> str:
    """HOST[:PORT] from what users type: `host:5000`, `https://host/`, `registry://host`."""
    host = text.strip()
    for prefix in ("registry://", "https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix) :]
    host = host.rstrip("/")
    if not HOST_PATTERN.fullmatch(host):
        raise UsageError(f"invalid registry host {redact(text)!r}: expected HOST or HOST:PORT")
    return host.lower()


def login_target(text: str) -> str:
    """The HOST[:PORT] `login` may log in to: refused, before anything is asked or sent, when
    registries.conf blocks it."""
    host = login_host(text)
    registries_conf.active().refuse_blocked_host(host)
    return host


def login(settings: RunSettings, host: str, credential: Credential) -> Path:
    """Check `credential` against registry HOST, then store it in the auth file (--authfile,
    else $REGISTRY_AUTH_FILE, else docker's config.json); returns that file."""
    from occystrap.credentials import auth_file_for_writing, store_credential

    host = login_target(host)
    _verify(settings, host, credential)
    path = auth_file_for_writing(settings.authfile)
    store_credential(path, host, credential)
    return path


def logout(settings: RunSettings, host: str) -> tuple[Path, bool]:
    """Remove HOST's entry from the auth file login writes and from every auth file
    credentials are read from (skopeo's and podman's containers/auth.json too), so no saved
    login is left: (a file it was removed from, else the login file; whether there was one).
    The legacy ~/.dockercfg, which nothing writes any more, is left alone."""
    from occystrap.credentials import (
        LEGACY_FILE_NAME,
        auth_file_for_writing,
        auth_files_for_reading,
        remove_credential,
    )

    key = login_host(host)
    written = auth_file_for_writing(settings.authfile)
    places = dict.fromkeys([written, *auth_files_for_reading(settings.authfile)])
    removed = [
        path
        for path in places
        if path.name != LEGACY_FILE_NAME and path.is_file() and remove_credential(path, key)
    ]
    return (removed[0] if removed else written), bool(removed)


# Asks the user for a value on the terminal: (what, whether to hide the answer) -> the answer.
Prompt = Callable[[str, bool], str]


def ask_credential(
    settings: RunSettings,
    username: str | None,
    password_stdin: bool,
    prompt: Prompt | None = None,
    password: str | None = None,
) -> Credential:
    """The login's user (-u, else --username, else `prompt` on a terminal) and password
    (--password-stdin, else `password` (login -p), else --password, else `prompt` without
    echo on a terminal, else a line of stdin). The password is never echoed."""
    from occystrap.credentials import Credential

    username = username or settings.username
    if not username:
        if not sys.stdin.isatty() or password_stdin or prompt is None:
            raise UsageError("no username: give -u USER")
        username = prompt("Username", False)
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif (password or settings.password) is not None:
        LOG.warning(
            "a password on the command line is visible to other users; use --password-stdin"
        )
        password = password or settings.password
    elif sys.stdin.isatty() and prompt is not None:
        password = prompt("Password", True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("empty password: give it on stdin (--password-stdin) or at the prompt")
    return Credential(username, password)


def _verify(settings: RunSettings, host: str, credential: Credential) -> None:
    """GET /v2/ at the registry itself with exactly this credential (none from files)."""
    from occystrap.credentials import CredentialStore
    from occystrap.registry.hosts import canonical_registry_host

    chain = dataclasses.replace(
        settings.chain_settings([host]).direct(),
        credentials=CredentialStore({host: credential}, []),
    )
    with build_client(chain) as http:
        try:  # docker.io and its aliases are served by registry-1.docker.io
            registry = canonical_registry_host(host)
            RegistryClient(http, registry, insecure=settings.insecure).check_login()
        except RegistryError as exc:
            raise RegistryError(f"login to {host} as {credential.username} failed: {exc}") from None
