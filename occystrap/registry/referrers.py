"""What refers to a manifest: signatures, SBOMs, attestations, found the three ways they are kept.

- the OCI 1.1 referrers API (`GET /v2/NAME/referrers/DIGEST`), where the store has it;
- else the referrers tag schema: an index tagged `sha256-<hex>` listing the referrers;
- cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`, which name one manifest each.

Discovery is recursive (a signature of an SBOM is found under the SBOM) and reads through a
`occystrap.graph.Store`, so a registry and an OCI layout are searched by the same code.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from occystrap.errors import OccystrapError
from occystrap.graph import Store, StoreSink, StoreSource, copy_graph
from occystrap.jsondoc import parse_json
from occystrap.manifest import (
    Descriptor,
    Manifest,
    ManifestIndex,
    descriptor_json,
    empty_index,
    parse_manifest,
)
from occystrap.mediatypes import OCI_EMPTY, OCI_INDEX

LOG = logging.getLogger("occystrap.referrers")

FOUND_BY_API = "referrers API"
FOUND_BY_TAG = "referrers tag"
FOUND_BY_COSIGN = "cosign tag"
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
MAX_DEPTH = 16  # referrers of referrers of ...: deeper than any real chain
MAX_REFERRERS = 10_000  # in one tree, against a store that lists without end
_TAG_LENGTH = 128
# A tag that names referrers rather than an image: `sha256-<hex>` and cosign's suffixed forms.
REFERRERS_TAG = re.compile(r"[a-z0-9]+-[a-zA-Z0-9=_-]{32,}(?:\.sig|\.att|\.sbom)?")


# A tag that names one digest's referrers exactly: `ALGORITHM-HEX` (sha512 cut to a tag's
# 128 characters) or cosign's forms of it. Pruning goes by this, not REFERRERS_TAG, so an
# image tag such as `build-<40 hex>` is still an image tag there.
_DIGEST_REFERRERS_TAG = re.compile(
    r"(?:sha256-[0-9a-f]{64}|sha512-(?:[0-9a-f]{121}|[0-9a-f]{128}))(?:\.sig|\.att|\.sbom)?"
)


def names_referrers(tag: str | None) -> bool:
    """Whether `tag` is where some manifest's referrers are kept (what pruning leaves to
    that manifest's fate rather than judging as an image tag)."""
    return tag is not None and _DIGEST_REFERRERS_TAG.fullmatch(tag) is not None


def referrers_tags_of(digest: str) -> list[str]:
    """Every tag that keeps `digest`'s referrers: its referrers index and cosign's tags."""
    return [referrers_tag(digest), *cosign_tags(digest)]


def referrers_tag(digest: str) -> str:
    """The tag of `digest`'s referrers index: `ALGORITHM-HEX`, cut to a tag's 128 characters."""
    return digest.replace(":", "-", 1)[:_TAG_LENGTH]


def cosign_tags(digest: str) -> list[str]:
    """cosign's tags for `digest`'s signature, attestations and SBOM."""
    return [digest.replace(":", "-", 1) + suffix for suffix in COSIGN_SUFFIXES]


def artifact_type_of(document: Manifest | ManifestIndex) -> str | None:
    """The artifact type a referrers list gives a manifest: its artifactType, else (for an
    image manifest) its config's media type unless that is the empty config."""
    if document.artifact_type:
        return document.artifact_type
    if isinstance(document, Manifest) and document.config.media_type != OCI_EMPTY:
        return document.config.media_type
    return None


def descriptor_of(raw: bytes, media_type: str, digest: str) -> Descriptor:
    """A referrer's descriptor as a referrers list holds it (artifactType, annotations)."""
    document = parse_manifest(raw, media_type)
    return Descriptor(
        document.media_type,
        digest,
        len(raw),
        annotations=dict(document.annotations),
        artifact_type=artifact_type_of(document),
    )


@dataclass(frozen=True)
class Referrer:
    """One manifest that refers to another, with what refers to it in turn."""

    descriptor: Descriptor
    found_by: str  # FOUND_BY_API, FOUND_BY_TAG or FOUND_BY_COSIGN
    tag: str | None = None  # the cosign tag naming it, kept wherever it is copied
    referrers: tuple[Referrer, ...] = field(default=())

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    def walk(self) -> Iterator[Referrer]:
        """This referrer and everything under it, parents before children."""
        yield self
        for child in self.referrers:
            yield from child.walk()

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "digest": self.digest,
            "mediaType": self.descriptor.media_type,
            "size": self.descriptor.size,
            "artifactType": self.descriptor.artifact_type,
            "foundBy": self.found_by,
        }
        if self.tag is not None:
            document["tag"] = self.tag
        if self.descriptor.annotations:
            document["annotations"] = dict(self.descriptor.annotations)
        document["referrers"] = [child.to_json() for child in self.referrers]
        return document


@dataclass(frozen=True)
class ReferrerTree:
    """A manifest and what refers to it, as `occystrap referrers` lists it."""

    name: str  # what the user named, e.g. HOST/REPO:TAG
    subject: Descriptor
    referrers: tuple[Referrer, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.name,
            "digest": self.subject.digest,
            "mediaType": self.subject.media_type,
            "size": self.subject.size,
            "referrers": [referrer.to_json() for referrer in self.referrers],
        }


class _Budget:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.found = 0

    def take(self, what: str) -> None:
        self.found += 1
        if self.found > MAX_REFERRERS:
            raise OccystrapError(
                f"more than {MAX_REFERRERS} referrers under {what}; the store lists without end"
            )


def discover(store: Store, digest: str, artifact_type: str | None = None) -> tuple[Referrer, ...]:
    """Everything that refers to `digest`, recursively. `artifact_type` narrows the first level
    (what refers to `digest` itself); what refers to those is listed whatever its type."""
    return _discover(store, digest, artifact_type, 0, _Budget())


def _discover(
    store: Store, digest: str, artifact_type: str | None, depth: int, budget: _Budget
) -> tuple[Referrer, ...]:
    if digest in budget.seen or depth >= MAX_DEPTH:
        return ()
    budget.seen.add(digest)
    found: dict[str, tuple[Descriptor, str, str | None]] = {}
    for descriptor, found_by in _subject_referrers(store, digest, artifact_type):
        found.setdefault(descriptor.digest, (descriptor, found_by, None))
    for tag in cosign_tags(digest):
        answer = store.manifest_at(tag)
        if answer is None:
            continue
        raw, media_type, tagged = answer
        descriptor = descriptor_of(raw, media_type, tagged)
        if artifact_type is not None and descriptor.artifact_type != artifact_type:
            continue
        known = found.get(tagged)
        found[tagged] = (known[0], known[1], tag) if known else (descriptor, FOUND_BY_COSIGN, tag)
    referrers = []
    for descriptor, found_by, named_by in found.values():
        budget.take(digest)
        children = _discover(store, descriptor.digest, None, depth + 1, budget)
        referrers.append(Referrer(descriptor, found_by, named_by, children))
    return tuple(referrers)


def _subject_referrers(
    store: Store, digest: str, artifact_type: str | None
) -> list[tuple[Descriptor, str]]:
    """What names `digest` as its subject: from the API, else from the referrers tag's index."""
    listed = store.referrers_api(digest, artifact_type)
    if listed is not None:
        return [(descriptor, FOUND_BY_API) for descriptor in listed]
    tag = referrers_tag(digest)
    answer = store.manifest_at(tag)
    if answer is None:
        return []
    document = parse_manifest(answer[0], answer[1])
    if not isinstance(document, ManifestIndex):
        LOG.warning("tag %s names a %s, not a referrers index; ignored", tag, document.media_type)
        return []
    return [
        (entry, FOUND_BY_TAG)
        for entry in document.manifests
        if artifact_type is None or entry.artifact_type == artifact_type
    ]


# -- copying ------------------------------------------------------------------------------


def copy_referrers(
    source: Store, destination: Store, subject: str, referrers: Sequence[Referrer]
) -> int:
    """Copy `referrers` of `subject` and what refers to them, byte for byte, so the destination
    finds them as the source did; return how many were copied.

    Each is pushed with its subject (and cosign's under its tag); where the destination does not
    index subjects itself, the referrers tag index is created or merged, keeping every entry
    already there. A cosign tag the destination already holds for other signatures is left
    as it is (with a warning): they were not ours to replace."""
    copied = 0
    for referrer in referrers:
        if referrer.tag is not None:
            there = destination.manifest_at(referrer.tag)
            if there is not None and there[2] != referrer.digest:
                LOG.warning(
                    "%s already holds other content under %s (%s); it is kept, and %s is"
                    " not copied",
                    destination,
                    referrer.tag,
                    there[2],
                    referrer.digest,
                )
                continue
        indexed = copy_manifest(source, destination, referrer.descriptor, referrer.tag)
        if referrer.found_by != FOUND_BY_COSIGN and not indexed:
            add_to_referrers_index(destination, subject, referrer.descriptor)
        copied += 1 + copy_referrers(source, destination, referrer.digest, referrer.referrers)
    return copied


def copy_manifest(
    source: Store,
    destination: Store,
    descriptor: Descriptor,
    tag: str | None = None,
) -> bool:
    """Copy a manifest or index and every blob and manifest under it, byte for byte (the
    graph copy's walk), under `tag`, else its digest; True when the destination indexed its
    subject itself."""
    sink = StoreSink(destination, tag)
    copy_graph(StoreSource(source, descriptor), sink)
    return sink.subject_indexed


def add_to_referrers_index(store: Store, subject: str, referrer: Descriptor) -> None:
    """List `referrer` in `subject`'s referrers tag index, creating it or adding to it; every
    entry already there is kept as it is."""
    tag = referrers_tag(subject)
    answer = store.manifest_at(tag)
    document = empty_index()
    if answer is not None:
        if not isinstance(parse_manifest(answer[0], answer[1]), ManifestIndex):
            raise OccystrapError(
                f"tag {tag} is taken by something that is not a referrers index; it is left"
                f" alone, so the copied referrers of {subject} cannot be listed there"
            )
        document = parse_json(answer[0], f"tag {tag}")
    if any(entry.get("digest") == referrer.digest for entry in document["manifests"]):
        return
    document["manifests"].append(descriptor_json(referrer))
    store.put_manifest(tag, json.dumps(document, separators=(",", ":")).encode(), OCI_INDEX)
