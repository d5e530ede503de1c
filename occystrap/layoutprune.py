"""Pruning an OCI layout (a directory or a bucket): tags taken out of `index.json`, then
the blobs that nothing left in it reaches.

A layout has no server to collect its garbage, so whoever removes a tag must. The entries
go first, through the storage's own `change_index` (the lock and conditional write that
adding a tag uses), so a concurrent writer's new tag is never lost; then blobs are deleted.
Only blobs the removed entries reached are candidates, and every entry still listed is
walked (indexes, manifests, configs, layers, and the referrers tags that keep signatures
and SBOMs), so a blob any of them reaches stays. When what is left cannot be walked whole
(a manifest missing, corrupt or unreadable), no blob is deleted: a guess could break an image.

The referrers of a manifest (its `sha256-<hex>` referrers index and cosign's tags) leave
with the last entry that reached it: a signature of an image the layout no longer holds
only keeps blobs alive. Referrers tags whose subject was already absent are left alone.

Before `index.json` changes, the blobs the removed entries reach are recorded in a journal
(`occystrap-prune.json` next to it), removed once they are deleted. A prune cut short
between the two (Ctrl-C, a crash, a failed delete) leaves the journal, and the next prune
of the layout finishes it: what an entry reaches by then stays, the rest is deleted. So
only blobs an entry once reached are ever deleted, and none is left behind for ever.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx

from occystrap.cancel import Cancellation, cancellable_pool
from occystrap.digests import check_digest
from occystrap.errors import OccystrapError
from occystrap.jsondoc import parse_json
from occystrap.limits import METADATA_LIMIT
from occystrap.manifest import Descriptor, Manifest, PlatformDescriptor, parse_manifest
from occystrap.ocilayout import (
    INDEX_FILE,
    LayoutStorage,
    blob_name,
    image_tags,
    parse_index,
    ref_name,
)
from occystrap.registry.referrers import names_referrers, referrers_tags_of

LOG = logging.getLogger("occystrap.ocilayout")
# Not a name the OCI layout specification gives any file (oci-layout, index.json, blobs/).
JOURNAL_FILE = "occystrap-prune.json"
JOURNAL_KEY = "occystrapPruneCandidates"
# Manifests read at once while walking a layout: small GETs, one round trip each.
READS_AT_ONCE = 16


@dataclass
class LayoutPrune:
    """What pruning one layout did."""

    removed: dict[str, str] = field(default_factory=dict)  # tag -> the digest it named
    referrers: list[str] = field(default_factory=list)  # referrers tags that went with them
    deleted: list[str] = field(default_factory=list)  # blob names deleted
    blobs_kept: str | None = None  # why no blob was deleted, when some could have been
    blob_failure: Exception | None = None  # deleting blobs failed, the entries already gone
    # An interrupted prune's journal was found: how many of its blobs this prune deleted
    # once it finished it (None: no journal, or it is not finished: see the two above).
    finished: int | None = None
    journal_found: bool = False


class ManifestGraph:
    """What a layout's manifests and indexes point at, each read once (blobs are named by
    digest, so what one says never changes)."""

    def __init__(self, storage: LayoutStorage, pool: ThreadPoolExecutor) -> None:
        self.storage, self._pool = storage, pool
        self._children: dict[str, tuple[list[Descriptor], list[Descriptor]] | str] = {}

    def _read(self, descriptor: Descriptor) -> tuple[list[Descriptor], list[Descriptor]] | str:
        """(manifests, blobs) a manifest or index points at, or why it cannot be told."""
        if descriptor.digest not in self._children:
            self._children[descriptor.digest] = self._parse(descriptor)
        return self._children[descriptor.digest]

    def _parse(self, descriptor: Descriptor) -> tuple[list[Descriptor], list[Descriptor]] | str:
        name = blob_name(descriptor.digest)
        if name is None:
            return f"manifest {descriptor.digest!r} is not named by a sha256 or sha512 digest"
        if descriptor.size > METADATA_LIMIT:
            return f"manifest {descriptor.digest} is implausibly large"
        raw = self.storage.read_blob(name)
        if raw is None:
            return f"manifest {descriptor.digest} is missing"
        try:
            check_digest(raw, descriptor.digest, f"manifest {descriptor.digest}")
            document = parse_manifest(raw, descriptor.media_type)
        except OccystrapError as error:
            return str(error)
        if isinstance(document, Manifest):
            return [], [document.config, *document.layers]
        return list(document.manifests), []

    def reach(self, roots: Iterable[Descriptor]) -> tuple[set[str], str | None]:
        """Every digest `roots` (manifests or indexes) reach, and the first reason the walk
        is incomplete (None: it is whole). A referrer's `subject` is not followed: a
        signature does not keep its image. Each level of the walk is read in parallel (a
        bucket answers one manifest per round trip)."""
        reached: set[str] = set()
        incomplete = None
        level = list(roots)
        while level:
            unseen = {d.digest: d for d in level if d.digest not in reached}
            reached.update(unseen)
            level = []
            for found in self._pool.map(self._read, unseen.values()):
                if isinstance(found, str):
                    incomplete = incomplete or found
                    continue
                manifests, blobs = found
                level += manifests
                reached.update(blob.digest for blob in blobs)
        return reached, incomplete


def _with_referrers(
    graph: ManifestGraph, roots: list[Descriptor], referrers: Mapping[int, Descriptor]
) -> set[int]:
    """The referrers entries (by position in `index.json`) whose subject `roots` reach,
    and the referrers of those in turn."""
    if not referrers:
        return set()
    reached, _ = graph.reach(roots)
    live: set[int] = set()
    while True:
        names = {name for digest in reached for name in referrers_tags_of(digest)}
        joining = {
            position
            for position, entry in referrers.items()
            if position not in live and ref_name(entry) in names
        }
        if not joining:
            return live
        live |= joining
        reached |= graph.reach(referrers[position] for position in joining)[0]


def read_journal(storage: LayoutStorage) -> set[str]:
    """The blob digests an interrupted prune of the layout left to delete (none: no journal).
    A file of that name that occystrap did not write is refused, never acted on."""
    raw = storage.read_blob(JOURNAL_FILE)
    if raw is None:
        return set()
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    candidates = document.get(JOURNAL_KEY) if isinstance(document, dict) else None
    if not isinstance(candidates, list) or not all(
        isinstance(digest, str) and blob_name(digest) is not None for digest in candidates
    ):
        raise OccystrapError(
            f"{storage.where}: {JOURNAL_FILE} is not occystrap's prune journal; move it away"
            " to prune this layout"
        )
    return set(candidates)


def _write_journal(storage: LayoutStorage, candidates: set[str]) -> None:
    document = {JOURNAL_KEY: sorted(candidates)}
    storage.write_file(JOURNAL_FILE, json.dumps(document, separators=(",", ":")).encode())


def going_entries(
    graph: ManifestGraph, entries: list[PlatformDescriptor], chosen: Collection[str]
) -> tuple[set[int], set[int]]:
    """Positions in `index.json` of the image entries tagged `chosen`, and of the referrers
    entries that go with them (their subject reached by nothing that stays)."""
    referrers = {
        position: entry
        for position, entry in enumerate(entries)
        if names_referrers(ref_name(entry))
    }
    images = [position for position in range(len(entries)) if position not in referrers]
    staying = [position for position in images if ref_name(entries[position]) not in chosen]
    before = _with_referrers(graph, [entries[position] for position in images], referrers)
    after = _with_referrers(graph, [entries[position] for position in staying], referrers)
    return set(images) - set(staying), before - after


def referrers_going(
    storage: LayoutStorage, raw_index: bytes, chosen: Collection[str], cancellation: Cancellation
) -> dict[str, str]:
    """The referrers tags (-> digest) that pruning the tags `chosen` would take along: what
    a dry run lists."""
    entries = parse_index(raw_index, storage.where)
    if not any(names_referrers(ref_name(entry)) for entry in entries):
        return {}
    with cancellable_pool(cancellation, READS_AT_ONCE, "prune") as pool:
        _, referring = going_entries(ManifestGraph(storage, pool), entries, chosen)
    return {str(ref_name(entries[position])): entries[position].digest for position in referring}


def prune_layout(
    storage: LayoutStorage,
    choose: Callable[[Mapping[str, str]], Collection[str]],
    cancellation: Cancellation,
) -> LayoutPrune:
    """Finish an interrupted prune's journal, if there is one; remove the tags `choose` picks
    from the layout's tags as they are now (tag -> digest, referrers tags left out; called
    again if another writer changes `index.json` meanwhile), then delete the blobs only they
    reached. Raises when `index.json` cannot be changed; a failure deleting blobs afterwards
    is `blob_failure`, the tags already gone. An interrupt of the run (`cancellation`)
    starts no more reads or deletes."""
    outcome = LayoutPrune()
    current = storage.read_index()
    if current is None:
        return outcome
    journaled = read_journal(storage)
    outcome.journal_found = bool(journaled)
    changing = bool(choose(image_tags(parse_index(current, storage.where))))
    if not journaled and not changing:
        return outcome
    with cancellable_pool(cancellation, READS_AT_ONCE, "prune") as pool:
        return _prune(storage, choose if changing else None, journaled, pool, outcome)


def _prune(
    storage: LayoutStorage,
    choose: Callable[[Mapping[str, str]], Collection[str]] | None,
    journaled: set[str],
    pool: ThreadPoolExecutor,
    outcome: LayoutPrune,
) -> LayoutPrune:
    """`prune_layout`'s work, with `pool` reading manifests and deleting blobs (`choose`
    None: only the journal to finish)."""
    graph = ManifestGraph(storage, pool)
    candidates = set(journaled)  # what the journal holds

    def change(raw: bytes | None) -> bytes:
        if raw is None:
            raise OccystrapError(f"{storage.where}: {INDEX_FILE} disappeared while pruning")
        entries = parse_index(raw, storage.where)
        assert choose is not None
        chosen = set(choose(image_tags(entries)))
        images, referring = going_entries(graph, entries, chosen)
        going = images | referring
        outcome.removed = {
            name: entry.digest
            for position, entry in enumerate(entries)
            if position in going and (name := ref_name(entry)) in chosen
        }
        outcome.referrers = [str(ref_name(entries[position])) for position in sorted(referring)]
        reached, _ = graph.reach(entries[position] for position in going)
        recorded = journaled | {digest for digest in reached if blob_name(digest) is not None}
        if recorded != candidates:  # recorded before index.json changes
            _write_journal(storage, recorded)
            candidates.clear()
            candidates.update(recorded)
        document = parse_json(raw, f"{storage.where}/{INDEX_FILE}")
        document["manifests"] = [
            entry for position, entry in enumerate(document["manifests"]) if position not in going
        ]
        return json.dumps(document, separators=(",", ":")).encode()

    if outcome.journal_found:
        LOG.info("%s: finishing an interrupted prune (%s)", storage.where, JOURNAL_FILE)
    if choose is not None:
        storage.change_index(change)
        LOG.info(
            "%s: removed tags %s and referrers tags %s",
            storage.where,
            ", ".join(sorted(outcome.removed)),
            ", ".join(outcome.referrers) or "(none)",
        )
    try:
        _collect_garbage(storage, graph, pool, candidates, outcome)
    except (OccystrapError, httpx.RequestError) as exc:
        LOG.warning(
            "%s: deleting blobs failed after %d were deleted", storage.where, len(outcome.deleted)
        )
        outcome.blob_failure = exc
        return outcome
    if outcome.journal_found and outcome.blobs_kept is None:
        resumed = {blob_name(digest) for digest in journaled}
        outcome.finished = sum(name in resumed for name in outcome.deleted)
    return outcome


def _collect_garbage(
    storage: LayoutStorage,
    graph: ManifestGraph,
    pool: ThreadPoolExecutor,
    candidates: set[str],
    outcome: LayoutPrune,
) -> None:
    """Delete the `candidates` (the journal's blobs) that no entry of `index.json`, as it is
    now, reaches, then the journal. After a failed delete none starts; those under way
    finish before the failure is raised, so `outcome.deleted` is what was deleted. The
    journal stays when anything is left undone."""
    if not candidates:
        return
    raw = storage.read_index()
    remaining = [] if raw is None else parse_index(raw, storage.where)
    protected, incomplete = graph.reach(remaining)
    doomed = sorted(candidates - protected)
    if incomplete is not None:
        if doomed:
            outcome.blobs_kept = (
                f"no blob deleted: what the layout still holds cannot be walked whole"
                f" ({incomplete})"
            )
            LOG.warning("%s: %s", storage.where, outcome.blobs_kept)
            return
        storage.delete_blob(JOURNAL_FILE)
        return
    names = [name for digest in doomed if (name := blob_name(digest)) is not None]
    failures: list[BaseException] = []

    def delete(name: str) -> None:
        if failures:  # one failed: the store is refusing, start no more
            return
        try:
            storage.delete_blob(name)
        except BaseException as error:
            failures.append(error)
            LOG.warning(
                "%s: deleting %s failed, no more deletes start: %s", storage.where, name, error
            )
            raise
        outcome.deleted.append(name)

    try:
        wait([pool.submit(delete, name) for name in names])  # those under way finish
        if failures:
            raise failures[0]
    except BaseException:
        # The journal keeps what is left, so the prune that finishes it counts what it deletes.
        deleted = set(outcome.deleted)
        with contextlib.suppress(OccystrapError, httpx.RequestError):
            _write_journal(storage, {d for d in candidates if blob_name(d) not in deleted})
        raise
    storage.delete_blob(JOURNAL_FILE)
    LOG.info("%s: %d blobs deleted", storage.where, len(outcome.deleted))
