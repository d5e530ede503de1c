"""registry://HOST/REPO[:TAG|@DIGEST]: a Registry V2 repository, read and written.

This module parses the URI; reading and writing images (registry_images.py) load when a
copy opens an end, so a command that only asks a registry a question never loads the copy
machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from occystrap import registries_conf
from occystrap.endpoints import (
    Endpoint,
    Scheme,
    boolean_option,
    non_empty_option,
    query_options,
    split_query,
)
from occystrap.errors import OccystrapError, RegistryError, UsageError
from occystrap.platforms import Platform
from occystrap.registry.reference import (
    DIGEST_PATTERN,
    ImageReference,
    parse_reference,
    validate_repository,
)

if TYPE_CHECKING:
    from occystrap.endpoints.registry_images import RegistryDestination, RegistrySource
    from occystrap.image import Image
    from occystrap.pipeline import RunContext
    from occystrap.registry.client import RegistryClient


LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RegistryURI(Endpoint):
    blobs_are = "uploaded"
    reference: ImageReference
    os: str | None = None
    arch: str | None = None
    variant: str | None = None
    insecure: bool | None = None
    # False for registry://HOST/PREFIX (no :TAG or @DIGEST given): a prefix for many images.
    # How the URI was written, not what it names, so equal URIs may differ in it.
    names_tag: bool = field(default=True, compare=False)
    # A short name under short-name-mode permissive or disabled: the other search
    # registries' references, in the order to try them when `reference` lacks the image.
    alternatives: tuple[ImageReference, ...] = field(default=(), compare=False)

    def credential_scope(self) -> str:
        return f"{self.reference.registry}/{self.reference.repository}"

    @property
    def image_reference(self) -> ImageReference:
        return self.reference

    def describe(self) -> str:
        return str(self.reference)

    def accepts_many_images(self) -> bool:
        return not self.names_tag and self.reference.digest is None

    def destination_for(self, image: Endpoint) -> RegistryURI:
        """HOST/PREFIX/ORG/REPO:TAG for the image ORG/REPO:TAG of a many-image source."""
        source = image.image_reference
        if source is None:
            raise UsageError(f"{image} is not a registry image, so {self} cannot name it")
        prefix = self.reference
        repository = f"{prefix.repository}/{source.repository}"
        validate_repository(repository, repository)
        reference = ImageReference(prefix.registry, repository, source.tag, source.digest)
        return replace(self, reference=reference, names_tag=True)

    def inspect_keys(self, ctx: RunContext, image: Image, index_digest: str | None) -> dict:
        from occystrap.registry.inspect import PickedImage, inspect_keys

        return inspect_keys(self.client(ctx), self.reference, PickedImage(image, index_digest))

    def __str__(self) -> str:
        return self.shown or f"registry://{self.reference}"

    def client(self, ctx: RunContext) -> RegistryClient:
        from occystrap.registry.client import RegistryClient

        insecure = ctx.settings.insecure if self.insecure is None else self.insecure
        return RegistryClient(
            ctx.http,
            self.reference.registry,
            insecure=insecure,
            on_download=lambda n: ctx.stats.add(bytes_downloaded=n),
            cancellation=ctx.cancellation,
        )

    @property
    def platform(self) -> Platform | None:
        """The platform this URI's own options pin, if any."""
        if self.os is None and self.arch is None and self.variant is None:
            return None
        return Platform(self.os or "linux", self.arch or "amd64", self.variant)

    def found(self, head: Callable[[RegistryURI], object], *, with_credential: bool) -> RegistryURI:
        """This URI, or for a short name with alternatives the first candidate whose
        manifest answers `head` (see `first_answer`), without alternatives. A destination
        takes the first candidate as it is."""
        if not self.alternatives:
            return self

        def answered(candidate: RegistryURI) -> RegistryURI:
            head(candidate)
            return candidate

        return self.first_answer(answered, with_credential=with_credential)

    def first_answer(self, ask: Callable[[RegistryURI], T], *, with_credential: bool) -> T:
        """What `ask` gets from this URI; for a short name with alternatives, from the first
        candidate (search registry) that answers, in order: any failure (not found,
        refused, unreachable) moves on to the next, as podman does. None answering is one
        line naming every registry tried and why each gave no answer. A usage error (an
        unreadable --ca-cert, a bad credentials file) is the same at every registry: it is
        raised as it is.

        `with_credential`: the command line gives a credential for this read (--username/
        --password, --src-creds). It belongs to one host, and a search would send it to
        each registry tried, so that is refused before any request; credentials from the
        auth files are each a host's own, and go to that host only."""
        import httpx

        from occystrap.registry.errors import NOT_FOUND, failure_reason

        if not self.alternatives:
            return ask(self)
        if with_credential:
            raise UsageError(
                f"{self}: a short name is looked for at several search registries"
                f" ({', '.join(self._named(each) for each in self.candidates())}), and"
                " credentials given on the command line belong to one host: name the"
                f" registry in full, e.g. registry://{self._named(self.reference)}"
            )
        tried = []
        for reference in self.candidates():
            candidate = replace(self, reference=reference, alternatives=())
            named = self._named(reference)
            try:
                answer = ask(candidate)
            except UsageError:
                raise
            except (OccystrapError, httpx.HTTPError) as exc:
                LOG.info("%s: not there (%s)", named, exc)
                tried.append((named, failure_reason(exc)))
                continue
            LOG.info("%s: found at %s", self, named)
            return answer
        # Each with why: a registry that holds the image but refused (401) or failed (5xx,
        # TLS, unreachable) is not one that lacks it.
        reasons = ", ".join(f"{named} ({reason})" for named, reason in tried)
        lacking = all(reason == NOT_FOUND for _, reason in tried)
        raise RegistryError(
            f"{self}: no search registry served it: {reasons}", status=404 if lacking else None
        )

    @contextmanager
    def first_held(
        self, ask: Callable[[RegistryURI, ExitStack], T], *, with_credential: bool
    ) -> Iterator[T]:
        """`first_answer` for an `ask` that opens what the caller goes on using (a client, a
        store) on the stack it is given: the answering candidate's stay open until the block
        ends, each other candidate's close as it fails."""
        with ExitStack() as held:

            def attempt(candidate: RegistryURI) -> T:
                with ExitStack() as opened:
                    answer = ask(candidate, opened)
                    held.enter_context(opened.pop_all())
                    return answer

            yield self.first_answer(attempt, with_credential=with_credential)

    def candidates(self) -> tuple[ImageReference, ...]:
        """Where the image may be: the reference, then a short name's other search
        registries, in order."""
        return (self.reference, *self.alternatives)

    def _named(self, reference: ImageReference) -> str:
        """`reference` as this URI names it: a repository (tags, or an image at the default
        tag) is shown without the tag it was given."""
        return str(reference if self.names_tag else replace(reference, tag=None))

    def open_input(self, ctx: RunContext) -> RegistrySource:
        from occystrap.endpoints.registry_images import RegistrySource

        uri = self.found(
            lambda candidate: head_manifest(candidate.client(ctx), candidate),
            with_credential=ctx.settings.source_credential is not None,
        )
        return RegistrySource(uri.client(ctx), uri.reference, self.platform)

    def open_output(self, ctx: RunContext) -> RegistryDestination:
        from occystrap.endpoints.registry_images import RegistryDestination

        return RegistryDestination(self.client(ctx), self.reference, ctx)


def _parse(text: str, rest: str) -> RegistryURI:
    body, query = split_query(rest)
    if _has_userinfo(body):
        raise UsageError(
            f"{text!r} carries credentials in the URI; give them with --username/--password,"
            " --src-creds/--dest-creds or a login instead"
        )
    options = query_options(text, query, ("os", "arch", "variant", "insecure"))
    first, *alternatives = _configured_references(text, body)
    return RegistryURI(
        reference=first,
        alternatives=tuple(alternatives),
        os=non_empty_option(text, "os", options.get("os")),
        arch=non_empty_option(text, "arch", options.get("arch")),
        variant=non_empty_option(text, "variant", options.get("variant")),
        insecure=None
        if options.get("insecure") is None
        else boolean_option(text, "insecure", options["insecure"]),
        names_tag=":" in body.rpartition("/")[2],
    )


def _has_userinfo(body: str) -> bool:
    """Whether `body` starts `USER[:PASSWORD]@HOST`: a short name pinned by digest
    (`alpine@sha256:...`, no slash) has an `@` in its first segment too."""
    first, slash, _ = body.partition("/")
    return "@" in first and (bool(slash) or not DIGEST_PATTERN.fullmatch(first.rpartition("@")[2]))


def head_manifest(client: RegistryClient, uri: RegistryURI) -> None:
    """Ask `uri`'s registry for its manifest (HEAD): raises when it does not answer."""
    client.head_manifest(uri.reference.repository, uri.reference.reference)


def _configured_references(text: str, body: str) -> tuple[ImageReference, ...]:
    """The image `body` names once registries.conf has had its say: a short name resolved
    (to several candidates in order, under short-name-mode permissive or disabled), a
    blocked registry refused, a prefix rewritten to its location."""
    conf = registries_conf.active()
    if body and registries_conf.is_short_name(body, conf):
        references = conf.resolve_short_name(body)
    else:
        references = (parse_reference(body),)
    return tuple(conf.apply(reference, text) for reference in references)


SCHEME = Scheme(
    "registry", "registry://HOST/REPO[:TAG|@DIGEST][?os=&arch=&variant=&insecure=]", _parse
)
