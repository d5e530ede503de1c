"""Pruning a layout directory: entries leave index.json, then exactly the blobs nothing left
reaches (referrers tags kept with their subject, gone with it); nothing when what is left
cannot be walked whole."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from pathlib import Path

import pytest

from occystrap import cancel
from occystrap.cancel import Cancellation
from occystrap.errors import OccystrapError
from occystrap.layoutprune import JOURNAL_FILE, JOURNAL_KEY, READS_AT_ONCE, prune_layout
from occystrap.mediatypes import OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from occystrap.ocilayout import REF_NAME, DirectoryStorage


class Layout:
    """A layout directory written by hand, as another tool might have written it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.entries: list[dict] = []

    def blob(self, data: bytes, media_type: str = OCI_LAYER) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(self, *layers: bytes, subject: dict | None = None) -> dict:
        config = self.blob(
            json.dumps({"layers": [layer.hex() for layer in layers]}).encode(), OCI_CONFIG
        )
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [self.blob(layer) for layer in layers],
        }
        if subject is not None:
            document["config"] = self.blob(b"{}", OCI_EMPTY)
            document["subject"] = subject
        return self.blob(json.dumps(document).encode(), OCI_MANIFEST)

    def index(self, *manifests: dict) -> dict:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        return self.blob(json.dumps(document).encode(), OCI_INDEX)

    def tag(self, name: str | None, descriptor: dict) -> None:
        annotations = {} if name is None else {"annotations": {REF_NAME: name}}
        self.entries.append({**descriptor, **annotations})
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.path / "index.json").write_text(json.dumps(document))

    def tags(self) -> list[str | None]:
        index = json.loads((self.path / "index.json").read_text())
        return [entry.get("annotations", {}).get(REF_NAME) for entry in index["manifests"]]

    def files(self) -> set[str]:
        return {f"sha256:{path.name}" for path in (self.path / "blobs" / "sha256").iterdir()}


def drop(*tags: str):
    return lambda listed: {tag for tag in tags if tag in listed}


def referrers_tag(descriptor: dict) -> str:
    return descriptor["digest"].replace(":", "-")


def test_only_blobs_nothing_left_reaches_are_deleted(tmp_path):
    layout = Layout(tmp_path)
    shared, own = b"shared layer", b"drop's own layer"
    kept = layout.index(layout.image(shared, b"kept's layer"))
    dropped = layout.image(shared, own)
    layout.tag("kept", kept)
    layout.tag(None, layout.image(b"untagged, someone else's"))
    layout.tag("drop", dropped)
    before = layout.files()
    manifest = json.loads((tmp_path / "blobs" / dropped["digest"].replace(":", "/")).read_bytes())
    only_dropped = {
        dropped["digest"],
        manifest["config"]["digest"],
        manifest["layers"][1]["digest"],
    }

    pruned = prune_layout(DirectoryStorage(tmp_path), drop("drop"), Cancellation())

    assert pruned.removed == {"drop": dropped["digest"]}
    assert layout.tags() == ["kept", None]
    assert layout.files() == before - only_dropped
    assert set(pruned.deleted) == {f"blobs/{digest.replace(':', '/')}" for digest in only_dropped}


def test_referrers_go_with_their_subject_and_stay_with_a_kept_one(tmp_path):
    layout = Layout(tmp_path)
    kept, dropped = layout.image(b"kept"), layout.image(b"dropped")
    kept_signature = layout.image(b"kept's signature", subject=kept)
    signature = layout.image(b"dropped's signature", subject=dropped)
    signature_of_signature = layout.image(b"countersignature", subject=signature)
    cosign = layout.image(b"cosign signature", subject=dropped)
    stranger = {**layout.image(b"someone's"), "digest": "sha256:" + "e" * 64}
    for name, descriptor in [
        ("kept", kept),
        ("drop", dropped),
        (referrers_tag(kept), layout.index(kept_signature)),
        (referrers_tag(dropped), layout.index(signature)),
        (referrers_tag(signature), layout.index(signature_of_signature)),
        (referrers_tag(dropped) + ".sig", cosign),
        (referrers_tag(stranger), layout.index(layout.image(b"dangling referrer"))),
    ]:
        layout.tag(name, descriptor)

    pruned = prune_layout(DirectoryStorage(tmp_path), drop("drop"), Cancellation())

    assert layout.tags() == ["kept", referrers_tag(kept), referrers_tag(stranger)]
    assert sorted(pruned.referrers) == sorted(
        [referrers_tag(dropped), referrers_tag(signature), referrers_tag(dropped) + ".sig"]
    )
    for gone in (dropped, signature, signature_of_signature, cosign):
        assert gone["digest"] not in layout.files()
    for stays in (kept, kept_signature):
        assert stays["digest"] in layout.files()
    # The empty config every signature shares stays with the kept one's.
    assert hashlib.sha256(b"{}").hexdigest() in {digest[7:] for digest in layout.files()}


def test_nothing_is_deleted_when_what_stays_cannot_be_walked(tmp_path):
    layout = Layout(tmp_path)
    kept, dropped = layout.image(b"shared?"), layout.image(b"dropped")
    layout.tag("kept", kept)
    layout.tag("drop", dropped)
    (tmp_path / "blobs" / kept["digest"].replace(":", "/")).write_bytes(b"corrupt")
    before = layout.files()

    pruned = prune_layout(DirectoryStorage(tmp_path), drop("drop"), Cancellation())

    assert layout.tags() == ["kept"]
    assert layout.files() == before and pruned.deleted == []
    assert pruned.blobs_kept is not None and kept["digest"] in pruned.blobs_kept


def test_a_choice_of_nothing_leaves_index_json_untouched(tmp_path):
    layout = Layout(tmp_path)
    layout.tag("kept", layout.image(b"kept"))
    index = tmp_path / "index.json"
    written = index.stat().st_mtime_ns, index.read_bytes()
    seen = []

    pruned = prune_layout(
        DirectoryStorage(tmp_path), lambda tags: seen.append(dict(tags)) or (), Cancellation()
    )

    assert seen == [{"kept": layout.entries[0]["digest"]}]
    assert (index.stat().st_mtime_ns, index.read_bytes()) == written
    assert pruned.removed == {} and pruned.deleted == []


def dropped_with_many_blobs(layout: Layout) -> None:
    """A kept image and a dropped one whose own blobs outnumber the prune's workers."""
    layout.tag("kept", layout.image(b"kept"))
    layout.tag("drop", layout.image(*(b"layer %d" % n for n in range(2 * READS_AT_ONCE))))


class StuckDeletes(DirectoryStorage):
    """Deletes that, once every worker is in one, hang without heeding cancellation (a
    request to a bucket that stopped answering), after `on_all_started` ran."""

    def __init__(self, path: Path, on_all_started) -> None:
        super().__init__(path)
        self.started: list[str] = []
        self.all_started = threading.Barrier(READS_AT_ONCE, action=on_all_started)
        self.release = threading.Event()

    def delete_blob(self, name: str) -> None:
        self.started.append(name)
        self.all_started.wait(timeout=10)
        self.release.wait(30)
        super().delete_blob(name)


def test_an_interrupted_prune_stops_waiting_for_deletes_and_starts_no_more(tmp_path):
    layout = Layout(tmp_path)
    dropped_with_many_blobs(layout)
    main = threading.main_thread().ident
    assert main is not None
    storage = StuckDeletes(tmp_path, lambda: signal.pthread_kill(main, signal.SIGINT))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run = cancel.install_interrupt_handler()  # Ctrl-C as the CLI takes it
    try:
        begun = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            prune_layout(storage, drop("drop"), run)
        waited = time.monotonic() - begun
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        storage.release.set()
    assert run.is_set()
    assert waited < cancel.GRACE_SECONDS + 1
    assert len(storage.started) == READS_AT_ONCE  # the queued deletes never started


class OneDeleteFails(DirectoryStorage):
    """The first delete fails once every worker is in one; the others finish only once the
    prune has said that no more deletes start (`said_so`), so any delete started after the
    failure is seen."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.started: list[str] = []
        self.lock = threading.Lock()
        self.all_started = threading.Barrier(READS_AT_ONCE)
        self.said_so = threading.Event()
        self.unheard: list[str] = []

    def delete_blob(self, name: str) -> None:
        with self.lock:
            first = not self.started
            self.started.append(name)
        if len(self.started) <= READS_AT_ONCE:
            self.all_started.wait(timeout=10)
        if first:
            raise OccystrapError("HTTP 503 deleting a blob")
        if not self.said_so.wait(10):
            self.unheard.append(name)
        super().delete_blob(name)


class OnWarning(logging.Handler):
    def __init__(self, words: str, then) -> None:
        super().__init__(logging.WARNING)
        self.words, self.then = words, then

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.then()


def test_a_failed_delete_starts_no_more_and_counts_those_under_way(tmp_path, caplog):
    layout = Layout(tmp_path)
    dropped_with_many_blobs(layout)
    before = layout.files()
    storage = OneDeleteFails(tmp_path)
    logger = logging.getLogger("occystrap.ocilayout")
    handler = OnWarning("no more deletes start", storage.said_so.set)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger.name):
            pruned = prune_layout(storage, drop("drop"), Cancellation())
    finally:
        logger.removeHandler(handler)

    assert isinstance(pruned.blob_failure, OccystrapError)
    assert len(storage.started) == READS_AT_ONCE  # none started after the failure
    gone = {f"blobs/{digest.replace(':', '/')}" for digest in before - layout.files()}
    assert set(pruned.deleted) == gone and len(gone) == READS_AT_ONCE - 1
    (left,) = json.loads((tmp_path / JOURNAL_FILE).read_bytes()).values()
    # The journal keeps only what is left: the manifest, config and layers not deleted.
    assert set(left) <= layout.files() and len(left) == 2 + 2 * READS_AT_ONCE - len(gone)
    assert f"deleting blobs failed after {READS_AT_ONCE - 1} were deleted" in caplog.text
    assert storage.unheard == []  # each delete under way finished after the failure


class RefusingDeletes(DirectoryStorage):
    """A store that stopped allowing deletes after the entries were removed."""

    def delete_blob(self, name: str) -> None:
        raise OccystrapError("HTTP 503 deleting a blob")


def test_an_interrupted_prune_is_finished_by_the_next_keeping_what_a_new_tag_reaches(tmp_path):
    layout = Layout(tmp_path)
    layout.tag("kept", layout.image(b"kept"))
    dropped = layout.image(b"shared later", b"dropped's own")
    layout.tag("drop", dropped)
    manifest = json.loads((tmp_path / "blobs" / dropped["digest"].replace(":", "/")).read_bytes())
    reached = {dropped["digest"], manifest["config"]["digest"]}
    reached |= {layer["digest"] for layer in manifest["layers"]}
    before = layout.files()

    cut_short = prune_layout(RefusingDeletes(tmp_path), drop("drop"), Cancellation())

    assert cut_short.removed == {"drop": dropped["digest"]}
    assert isinstance(cut_short.blob_failure, OccystrapError)
    assert layout.tags() == ["kept"] and layout.files() == before
    journal = json.loads((tmp_path / JOURNAL_FILE).read_bytes())
    assert set(journal[JOURNAL_KEY]) == reached

    del layout.entries[-1]  # the helper rewrites index.json from its entries: drop is gone
    layout.tag("new", layout.image(b"shared later"))  # synced meanwhile
    synced = layout.files()
    finished = prune_layout(DirectoryStorage(tmp_path), drop(), Cancellation())

    shared = f"sha256:{hashlib.sha256(b'shared later').hexdigest()}"
    assert layout.files() == synced - (reached - {shared})
    assert finished.finished == len(reached) - 1 and finished.blob_failure is None
    assert not (tmp_path / JOURNAL_FILE).exists()
    assert layout.tags() == ["kept", "new"]


def test_a_journal_occystrap_did_not_write_is_refused_and_nothing_deleted(tmp_path):
    layout = Layout(tmp_path)
    layout.tag("kept", layout.image(b"kept"))
    layout.tag("drop", layout.image(b"dropped"))
    (tmp_path / JOURNAL_FILE).write_text('{"someone": "else"}')
    before = layout.files()

    with pytest.raises(OccystrapError, match="not occystrap's prune journal"):
        prune_layout(DirectoryStorage(tmp_path), drop("drop"), Cancellation())

    assert layout.tags() == ["kept", "drop"] and layout.files() == before
    assert (tmp_path / JOURNAL_FILE).read_text() == '{"someone": "else"}'
