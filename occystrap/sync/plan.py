"""Planning a sync: every source tag resolved to its digest and compared with the target's.

Nothing moves here. A source repository is listed (paginated tags), its tags filtered, and
each kept tag costs one request at each end: HEAD at the source (free of Docker Hub's pull
quota) and HEAD at the target (or a look at an OCI layout's index.json). Only images whose
digests differ are planned as copies, so a sync with nothing to do moves no blob.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from occystrap.buckets import BucketURI
from occystrap.bulk import describe_failure
from occystrap.endpoints import parse_uri, split_query
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.quay import QuayURI
from occystrap.endpoints.registry import RegistryURI
from occystrap.endpoints.registry_images import RegistrySource
from occystrap.errors import OccystrapError, RegistryError, UsageError
from occystrap.graph import platform_root
from occystrap.layoutprune import referrers_going
from occystrap.manifest import Manifest, parse_manifest
from occystrap.ocilayout import (
    DEFAULT_TAG,
    DirectoryStorage,
    LayoutStorage,
    image_tags,
    parse_index,
    tagged_entry,
)
from occystrap.pipeline import RunContext
from occystrap.platforms import Platform
from occystrap.quay.api import QuayClient, api_base
from occystrap.registry.client import RegistryClient
from occystrap.registry.hosts import canonical_registry_host
from occystrap.registry.reference import HOST_PATTERN, validate_repository
from occystrap.registry.referrers import names_referrers, referrers_tags_of
from occystrap.sync.config import SyncRule, SyncSpec

LOG = logging.getLogger("occystrap.sync")
GLOB_CHARACTERS = frozenset("*?[")
# Requests in flight while planning: each is a small HEAD, so more than -j helps.
PLAN_PARALLEL = 16

COPY, UNCHANGED, PRUNE, FAILED = "copy", "unchanged", "prune", "failed"
# A stale tag left in place: its manifest is also under a tag that stays.
KEPT = "kept"


@dataclass(frozen=True)
class Repository:
    """A repository of a registry; `insecure` is the URI's own ?insecure= (None: the run's)."""

    registry: str
    name: str
    insecure: bool | None = None

    def uri(self, reference: str) -> str:
        """registry://HOST/NAME:TAG, or @DIGEST (tags cannot hold ':')."""
        separator = "@" if ":" in reference else ":"
        query = "" if self.insecure is None else f"?insecure={str(self.insecure).lower()}"
        return f"registry://{self.registry}/{self.name}{separator}{reference}{query}"

    def __str__(self) -> str:
        return f"registry://{self.registry}/{self.name}"


@dataclass(frozen=True)
class Layout:
    """An OCI image layout directory holding one repository's tags."""

    path: Path

    def uri(self, reference: str) -> str:
        return f"oci-layout://{self.path}?tag={reference}"

    def __str__(self) -> str:
        return f"oci-layout://{self.path}"


@dataclass(frozen=True)
class Bucket:
    """An OCI image layout in a bucket (s3://, gs://) holding one repository's tags;
    `options`: the target's own query (part_size), kept on every image's URI."""

    location: str  # SCHEME://BUCKET[/PREFIX]
    options: str = ""

    def uri(self, reference: str) -> str:
        return f"{self.location}?tag={reference}" + (f"&{self.options}" if self.options else "")

    def __str__(self) -> str:
        return self.location


Target = Repository | Layout | Bucket


@dataclass(frozen=True)
class PlannedImage:
    """One image of the plan: what it is at each end and what the run will do with it."""

    source: str  # the source image's URI, at its tag
    target: str  # the target image's URI, at its tag
    action: str  # copy, unchanged, prune, kept or failed
    digest: str | None = None  # the source's digest (for prune and kept: the target's)
    target_digest: str | None = None  # what the target holds now (None: nothing)
    error: str | None = None  # why it failed (for kept: which tag holds its manifest)
    source_registry: str = ""
    platforms: tuple[Platform, ...] = ()
    referrers: bool = False
    pinned: str | None = None  # the source's URI pinned by digest: what is copied

    def as_json(self) -> dict:
        document = asdict(self)
        document["platforms"] = [str(platform) for platform in self.platforms]
        return document


@dataclass
class SyncPlan:
    images: list[PlannedImage] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for image in self.images if image.action == action)


@dataclass(frozen=True)
class _Pair:
    """One source repository (with the tags the rule wants) and where it goes."""

    source: Repository
    target: Target
    rule: SyncRule
    tags: tuple[str, ...] = ()


class Planner:
    """Plans a `SyncSpec` over the run's one client (`ctx.http`; `ctx` also opens bucket
    targets)."""

    def __init__(self, ctx: RunContext, prune: bool = False) -> None:
        self.ctx, self.prune = ctx, prune
        self.http, self.insecure = ctx.http, ctx.settings.insecure
        self._clients: dict[tuple[str, bool], RegistryClient] = {}
        # A bucket's index.json, read once for all its tags (None: no layout there yet).
        self._bucket_indexes: dict[str, bytes | None] = {}
        self._bucket_lock = threading.Lock()

    def client(self, repository: Repository) -> RegistryClient:
        insecure = self.insecure if repository.insecure is None else repository.insecure
        key = (repository.registry, insecure)
        if key not in self._clients:
            self._clients[key] = RegistryClient(self.http, repository.registry, insecure=insecure)
        return self._clients[key]

    def plan(self, spec: SyncSpec) -> SyncPlan:
        pairs = [pair for rule in spec.rules for pair in self._pairs(rule)]
        with ThreadPoolExecutor(PLAN_PARALLEL, thread_name_prefix="plan") as pool:
            listed = list(pool.map(self._with_tags, pairs))
            jobs = [(pair, tag) for pair, _ in listed for tag in pair.tags]
            images = list(pool.map(lambda job: self._plan_image(*job), jobs))
            images += [failure for _, failure in listed if failure is not None]
            if self.prune:
                images += self._prunes([pair for pair, _ in listed], images, pool)
        return SyncPlan(images)

    # -- expanding a rule into repositories ----------------------------------------------

    def _pairs(self, rule: SyncRule) -> list[_Pair]:
        """The repositories a rule's source names, each with its target."""
        if rule.source.startswith("quay://"):
            return self._quay_pairs(rule)
        if not rule.source.startswith("registry://"):
            raise UsageError(
                f"sync source {rule.source!r} is not registry://HOST/REPO[/GLOB] or quay://ORG/GLOB"
            )
        body, query = split_query(rule.source.partition("://")[2])
        host, _, path = body.partition("/")
        if not GLOB_CHARACTERS & set(path):
            uri = parse_uri(rule.source)
            assert isinstance(uri, RegistryURI)
            reference = uri.reference
            source = Repository(reference.registry, reference.repository, uri.insecure)
            named_tag = ":" in path.rpartition("/")[2] or reference.digest is not None
            tags = (reference.reference,) if named_tag else ()
            return [_Pair(source, _target(rule.target, ""), rule, tags)]
        uri = parse_uri(f"registry://{host}/glob{'?' + query if query else ''}")
        assert isinstance(uri, RegistryURI)
        if not HOST_PATTERN.fullmatch(host):
            raise UsageError(f"invalid registry host {host!r} in {rule.source!r}")
        registry = uri.reference.registry
        catalog = self.client(Repository(registry, "", uri.insecure)).list_repositories()
        fixed = _fixed_prefix(path)
        return [
            _Pair(
                Repository(registry, name, uri.insecure),
                _target(rule.target, _relative(name, fixed)),
                rule,
            )
            for name in catalog
            if fnmatch.fnmatchcase(name, path)
        ]

    def _quay_pairs(self, rule: SyncRule) -> list[_Pair]:
        uri = parse_uri(rule.source)
        assert isinstance(uri, QuayURI)
        named_tag = ":" in split_query(rule.source.partition("://")[2])[0]
        quay = QuayClient(self.http, api_base(uri.host, self.insecure))
        fixed = _fixed_prefix(f"{uri.org}/{uri.glob}")
        return [
            _Pair(
                Repository(uri.host, f"{uri.org}/{name}"),
                _target(rule.target, _relative(f"{uri.org}/{name}", fixed)),
                rule,
                (uri.tag,) if named_tag else (),
            )
            for name in quay.repositories(uri.org, uri.since)
            if fnmatch.fnmatchcase(name, uri.glob)
        ]

    # -- tags and digests ----------------------------------------------------------------

    def _with_tags(self, pair: _Pair) -> tuple[_Pair, PlannedImage | None]:
        """The pair with the tags its rule keeps (listing the repository when it must)."""
        if pair.tags:
            return pair, None
        tag_filter = pair.rule.tags
        try:
            listed = self.client(pair.source).list_tags(pair.source.name)
        except (OccystrapError, httpx.RequestError) as exc:
            if not tag_filter.needs_listing:
                listed = []
            else:
                failure = PlannedImage(
                    str(pair.source),
                    str(pair.target),
                    FAILED,
                    error=describe_failure(exc),
                    source_registry=pair.source.registry,
                )
                return _Pair(pair.source, pair.target, pair.rule), failure
        return _Pair(pair.source, pair.target, pair.rule, tuple(tag_filter.select(listed))), None

    def _plan_image(self, pair: _Pair, tag: str) -> PlannedImage:
        rule, source = pair.rule, pair.source
        target_uri = pair.target.uri(tag)
        planned = PlannedImage(
            source.uri(tag),
            target_uri,
            FAILED,
            source_registry=source.registry,
            platforms=rule.platforms,
            referrers=rule.referrers,
        )
        try:
            digest = self._source_digest(source, tag, rule.platforms)
        except (OccystrapError, httpx.RequestError) as exc:
            return _replace(planned, error=describe_failure(exc))
        try:
            held = self._target_digest(pair.target, tag)
        except (OccystrapError, httpx.RequestError) as exc:
            return _replace(planned, digest=digest, error=describe_failure(exc))
        action = UNCHANGED if held == digest else COPY
        return _replace(
            planned, action=action, digest=digest, target_digest=held, pinned=source.uri(digest)
        )

    def _source_digest(self, source: Repository, tag: str, platforms: Sequence[Platform]) -> str:
        """The digest the target will hold: the source's, or its index narrowed to
        `platforms` (that needs the index itself: a GET instead of a HEAD)."""
        client = self.client(source)
        if not platforms:
            return client.head_manifest(source.name, tag).digest
        reference = parse_uri(source.uri(tag))
        assert isinstance(reference, RegistryURI)
        return platform_root(RegistrySource(client, reference.reference, None), platforms).digest

    def _target_digest(self, target: Target, tag: str) -> str | None:
        if isinstance(target, Layout):
            return layout_digest(target.path, tag)
        if isinstance(target, Bucket):
            return index_digest(self._layout_index(target), tag, str(target))
        try:
            return self.client(target).head_manifest(target.name, tag).digest
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise

    def _layout_index(self, target: Layout | Bucket) -> bytes | None:
        """The layout's `index.json` (None: no layout yet); a bucket's is read once for the
        whole plan (one GET per layout, whatever its tags)."""
        if isinstance(target, Layout):
            return DirectoryStorage(target.path).read_index()
        with self._bucket_lock:
            if target.location not in self._bucket_indexes:
                self._bucket_indexes[target.location] = self._layout_storage(target).read_index()
            return self._bucket_indexes[target.location]

    # -- pruning -------------------------------------------------------------------------

    def _prunes(
        self, pairs: Sequence[_Pair], planned: Sequence[PlannedImage], pool: ThreadPoolExecutor
    ) -> list[PlannedImage]:
        """Target tags no rule keeps, in the repositories and layouts the plan writes to; a
        stale tag whose manifest a kept tag will still hold after the copies is planned
        `kept`."""
        # By location: rules naming one place with different options share its tags.
        kept: dict[str, set[str]] = {}
        targets: dict[str, Target] = {}
        for pair in pairs:
            kept.setdefault(str(pair.target), set()).update(pair.tags)
            targets.setdefault(str(pair.target), pair.target)
        # What each kept tag will hold once the copies are done (as planned).
        expected: dict[str, str] = {}
        for image in planned:
            if image.action in (COPY, UNCHANGED) and image.digest:
                expected[image.target] = image.digest
            elif image.target_digest:
                expected[image.target] = image.target_digest

        def stale(target: Target) -> list[PlannedImage]:
            listed, wanted = self._target_tags(target), kept[str(target)]
            # Referrers tags (a registry's; a layout lists none) no rule names are no images:
            # they go with the manifest they refer to, and only then.
            referring = {tag for tag in listed if tag not in wanted and names_referrers(tag)}
            held: dict[str, str] = {}
            stale_digests: dict[str, str] = {}
            for tag, listed_digest in listed.items():
                if tag in referring:
                    continue
                known = expected.get(target.uri(tag))
                if tag in wanted and known is not None:
                    held[tag] = known
                    continue
                digest = listed_digest or self._target_head(target, tag)
                (held if tag in wanted else stale_digests)[tag] = digest
            sharers = manifest_sharers(stale_digests, held)
            going = {digest for tag, digest in stale_digests.items() if tag not in sharers}
            orphaned = referring & _referrers_tags(going) - _referrers_tags(held.values())
            unjudged = referring - orphaned - _referrers_tags(held.values())
            if unjudged and isinstance(target, Repository):
                orphaned |= self._orphaned_platform_referrers(
                    target, unjudged, going, set(held.values())
                )
            if isinstance(target, Repository):
                going_referrers = {tag: self._target_head(target, tag) for tag in sorted(orphaned)}
            elif going:  # a layout's go with their subject's entry: judged by what it reaches
                leaving = {tag for tag in stale_digests if tag not in sharers}
                going_referrers = self._layout_referrers(target, leaving)
            else:
                going_referrers = {}
            return [
                stale_image(target.uri(tag), digest, sharers.get(tag))
                for tag, digest in stale_digests.items()
            ] + [
                stale_image(target.uri(tag), digest, None)
                for tag, digest in sorted(going_referrers.items())
            ]

        return [image for images in pool.map(stale, targets.values()) for image in images]

    def _orphaned_platform_referrers(
        self, target: Repository, referring: set[str], going: set[str], held: set[str]
    ) -> set[str]:
        """Of `referring`, the referrers tags of the platform manifests of indexes that go
        which no tag that stays reaches (as the target holds them now: a copy still to come
        is judged again when the run prunes)."""
        client = self.client(target)

        def listed(digests: set[str]) -> set[str]:
            return {m for digest in digests for m in listed_manifests(client, target.name, digest)}

        candidates = referring & _referrers_tags(listed(going))
        if not candidates:
            return set()
        return candidates - _referrers_tags(held | listed(held))

    def _layout_storage(self, target: Layout | Bucket) -> LayoutStorage:
        if isinstance(target, Layout):
            return DirectoryStorage(target.path)
        uri = parse_uri(target.uri(DEFAULT_TAG))
        assert isinstance(uri, BucketURI)
        return uri.layout(self.ctx)

    def _layout_referrers(self, target: Layout | Bucket, leaving: set[str]) -> dict[str, str]:
        """The referrers tags (-> digest) of a layout that pruning `leaving` takes along, as
        the layout holds them now (the run judges again when it removes the entries)."""
        raw = self._layout_index(target)
        if raw is None:
            return {}
        return referrers_going(self._layout_storage(target), raw, leaving, self.ctx.cancellation)

    def _target_tags(self, target: Target) -> dict[str, str | None]:
        """The target's tags, each with its digest where the listing says it (a layout's
        `index.json`; a registry's tag list does not). A layout's referrers tags are left
        out: they go with their subject (`_layout_referrers`, occystrap.layoutprune)."""
        if isinstance(target, Repository):
            try:
                return dict.fromkeys(self.client(target).list_tags(target.name))
            except RegistryError as exc:
                if exc.status == 404:
                    return {}
                raise
        raw = self._layout_index(target)
        return {} if raw is None else dict(image_tags(parse_index(raw, str(target))))

    def _target_head(self, target: Target, tag: str) -> str:
        assert isinstance(target, Repository)  # a layout's listing names every digest
        return self.client(target).head_manifest(target.name, tag).digest


def manifest_sharers(stale: Mapping[str, str], held: Mapping[str, str]) -> dict[str, str]:
    """Stale tag -> a tag that stays and holds the same manifest. Registries delete
    manifests by digest, so deleting such a stale tag would take that tag with it."""
    holders: dict[str, str] = {}
    for tag, digest in sorted(held.items()):
        holders.setdefault(digest, tag)
    return {tag: holders[digest] for tag, digest in stale.items() if digest in holders}


def listed_manifests(client: RegistryClient, repository: str, digest: str) -> list[str]:
    """The digests of the manifests the index `digest` lists (none for an image manifest,
    or for one the repository does not hold)."""
    try:
        raw, media_type, _ = client.get_manifest(repository, digest)
    except RegistryError as exc:
        if exc.status == 404:
            return []
        raise
    document = parse_manifest(raw, media_type)
    return [] if isinstance(document, Manifest) else [entry.digest for entry in document.manifests]


def _referrers_tags(digests: Iterable[str]) -> set[str]:
    return {tag for digest in digests for tag in referrers_tags_of(digest)}


def stale_image(target: str, digest: str, sharer: str | None) -> PlannedImage:
    """A stale target tag: to prune, or kept because `sharer` holds its manifest too."""
    if sharer is None:
        return PlannedImage("", target, PRUNE, digest, digest)
    return PlannedImage("", target, KEPT, digest, digest, f"shares manifest with {sharer}")


def _replace(image: PlannedImage, **changes: object) -> PlannedImage:
    return PlannedImage(**{**asdict(image), "platforms": image.platforms, **changes})


def _fixed_prefix(path: str) -> str:
    """The directories of a glob before its first wildcard: `team/*` -> `team`."""
    fixed: list[str] = []
    for component in path.split("/"):
        if GLOB_CHARACTERS & set(component):
            break
        fixed.append(component)
    return "/".join(fixed)


def _relative(name: str, fixed: str) -> str:
    """`name` below the glob's fixed directories (which the target stands for)."""
    return name[len(fixed) + 1 :] if fixed else name


def _target(text: str, relative: str) -> Target:
    """The target of one source repository: the rule's target, or under it for a glob."""
    uri = parse_uri(text)
    names_tag = UsageError(
        f"sync target {text!r} names a tag; a target is a repository (or prefix): the"
        " source's tags are kept"
    )
    if isinstance(uri, OciLayoutURI):
        return Layout(uri.path / relative if relative else uri.path)
    if isinstance(uri, BucketURI):
        if uri.tag is not None:
            raise names_tag
        scheme, _, rest = text.partition("://")
        body, options = split_query(rest)
        location = f"{scheme}://{body.rstrip('/')}" + (f"/{relative}" if relative else "")
        return Bucket(location, options)
    if not isinstance(uri, RegistryURI):
        raise UsageError(
            f"sync target {text!r} is not registry://HOST/PREFIX, oci-layout://PATH or a"
            " bucket (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)"
        )
    last = text.partition("://")[2].partition("?")[0].rpartition("/")[2]
    if ":" in last or uri.reference.digest is not None:
        raise names_tag
    name = f"{uri.reference.repository}/{relative}" if relative else uri.reference.repository
    validate_repository(name, text)
    return Repository(uri.reference.registry, name, uri.insecure)


def layout_digest(path: Path, tag: str) -> str | None:
    """The digest an OCI layout holds under `tag` (None: no such tag, or no layout yet),
    looked up as the layout reader looks it up."""
    return index_digest(DirectoryStorage(path).read_index(), tag, str(path))


def index_digest(raw_index: bytes | None, tag: str, where: str) -> str | None:
    """The digest a layout's `index.json` names `tag` (None: no such tag, or no index)."""
    entry = None if raw_index is None else tagged_entry(raw_index, tag, where)
    return None if entry is None else entry.digest


def split_host(uri: str) -> str | None:
    """HOST[/PATH] of a registry:// or quay:// URI, for its credentials; None for files."""
    scheme, _, rest = uri.partition("://")
    if scheme not in ("registry", "quay"):
        return None
    location = rest.partition("?")[0]
    if scheme == "quay":
        return parse_uri(uri).credential_scope()
    host, _, path = location.partition("/")
    path = path.partition("@")[0]
    if ":" in path.rpartition("/")[2]:
        path = path.rpartition(":")[0]
    if GLOB_CHARACTERS & set(path):
        path = _fixed_prefix(path)
    return f"{canonical_registry_host(host)}/{path}" if path else canonical_registry_host(host)
