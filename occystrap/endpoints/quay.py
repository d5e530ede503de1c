"""quay://ORG[/GLOB[:TAG]]: every repository of a Quay organisation matching GLOB, at TAG.

It names many images (`images()` finds them through the Quay API), so `process` copies each
and `info` lists them; it is never a destination.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from occystrap.endpoints import Endpoint, Scheme, non_empty_option, query_options, split_query
from occystrap.errors import UsageError
from occystrap.quay.api import QuayClient, api_base, find_images
from occystrap.registry.reference import (
    HOST_PATTERN,
    PATH_COMPONENT_PATTERN,
    ImageReference,
    validate_tag,
)

if TYPE_CHECKING:
    from occystrap.middleware.builder import ChainSettings
    from occystrap.pipeline import RunContext
    from occystrap.settings import RunSettings

DEFAULT_QUAY_HOST = "quay.io"
_DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_GLOB_PATTERN = re.compile(r"[a-z0-9._*?\[\]!/-]+")
_FORM = "quay://ORG[/GLOB[:TAG]][?since=YYYY-MM-DD&token=T&host=HOST]"


@dataclass
class QuayURI(Endpoint):
    """Every repository of a Quay organisation matching `glob`, at `tag`."""

    org: str
    glob: str = "*"
    tag: str = "latest"
    since: datetime.date | None = None
    token: str | None = None
    host: str = DEFAULT_QUAY_HOST

    holds_many_images = True

    def credential_scope(self) -> str:
        return self.host

    def chain_settings(self, chain: ChainSettings, settings: RunSettings) -> ChainSettings:
        """The Quay API of `host` joins the chain, with this URI's token if it has one."""
        base = api_base(self.host, settings.insecure)
        token = self.token or chain.network.quay_token
        return replace(chain, network=replace(chain.network, quay_token=token), quay_api_base=base)

    def images(self, ctx: RunContext) -> list[Endpoint]:
        """Each repository's image, found through the Quay API (then read over the registry
        API like any other)."""
        from occystrap import registries_conf
        from occystrap.endpoints.registry import RegistryURI

        # registries.conf applies as to registry:// images: a blocked organisation is refused
        # before the API is asked, and each image found is rewritten (or refused) in turn.
        conf = registries_conf.active()
        conf.apply(ImageReference(self.host, self.org), self.shown)
        client = QuayClient(ctx.http, api_base(self.host, ctx.settings.insecure))
        found = find_images(client, self, ctx.settings.parallel)
        return [RegistryURI(conf.apply(image.reference, self.shown)) for image in found]

    def describe(self) -> str:
        """The selection without its token, for messages."""
        since = f" since {self.since}" if self.since else ""
        return f"{self.host}/{self.org}/{self.glob}:{self.tag}{since}"


def _date(text: str, value: str) -> datetime.date:
    try:
        if _DATE_PATTERN.fullmatch(value):
            return datetime.date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"invalid date since={value!r} in {text!r}: expected YYYY-MM-DD")


def _parse(text: str, rest: str) -> QuayURI:
    body, query = split_query(rest)
    options = query_options(text, query, ("since", "token", "host"))
    org, _, selection = body.partition("/")
    if not PATH_COMPONENT_PATTERN.fullmatch(org):
        raise UsageError(f"invalid organisation {org!r} in {text!r}: expected {_FORM}")
    glob, _, tag = selection.partition(":") if selection else ("*", "", "")
    if not _GLOB_PATTERN.fullmatch(glob):
        raise UsageError(
            f"invalid repository pattern {glob!r} in {text!r}: expected lowercase names with "
            "glob wildcards * ? [...]"
        )
    if tag:
        validate_tag(tag, text)
    elif ":" in selection:
        raise UsageError(f"empty tag in {text!r}: expected {_FORM}")
    since = options.get("since")
    host = options.get("host", DEFAULT_QUAY_HOST)
    if not HOST_PATTERN.fullmatch(host):
        raise UsageError(f"invalid host {host!r} in {text!r}: expected HOST or HOST:PORT")
    return QuayURI(
        org=org,
        glob=glob,
        tag=tag or "latest",
        since=None if since is None else _date(text, since),
        token=non_empty_option(text, "token", options.get("token")),
        host=host.lower(),
    )


SCHEME = Scheme("quay", _FORM, _parse, destination=False)
