"""The bucket layout's own logic, over an in-memory object store that keeps versions as a
bucket does: index.json is replaced only on the version read, and a writer that lost the
race starts again from what the winner wrote."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import threading

import pytest

from occystrap.buckets import BucketLayout, ObjectInfo
from occystrap.errors import DigestMismatchError, OccystrapError


class VersionedObjects:
    where = "mem://bucket"
    part_size = 8

    def __init__(self) -> None:
        self.bucket_id = ("mem", "bucket")
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.before_put = lambda key: None  # another writer acting between read and write
        self.streamed: list[str] = []

    def stat(self, key):
        found = self.objects.get(key)
        return None if found is None else ObjectInfo(len(found[0]), str(found[1]))

    def get(self, key):
        found = self.objects.get(key)
        return None if found is None else (found[0], str(found[1]))

    def open(self, key):
        return io.BytesIO(self.objects[key][0])

    def put(self, key, data, *, version, absent):
        self.before_put(key)
        current = self.objects.get(key)
        if absent and current is not None:
            return False
        if version is not None and (current is None or str(current[1]) != version):
            return False
        self.objects[key] = (data, (current[1] + 1) if current else 1)
        return True

    def put_stream(self, key, size, opener):
        with opener() as source:
            self.objects[key] = (source.read(), 1)
        self.streamed.append(key)


def add_tag(tag):
    def change(raw):
        document = json.loads(raw) if raw else {"manifests": []}
        document["manifests"].append(tag)
        return json.dumps(document).encode()

    return change


def test_a_writer_that_loses_the_race_keeps_the_winners_entry():
    objects = VersionedObjects()
    layout = BucketLayout(objects, "images")
    layout.change_index(add_tag("first"))
    raced = []

    def other_writer(key):
        if key == "images/index.json" and not raced:
            raced.append(key)
            BucketLayout(objects, "images").change_index(add_tag("other"))

    objects.before_put = other_writer
    layout.change_index(add_tag("mine"))
    assert json.loads(layout.read_index())["manifests"] == ["first", "other", "mine"]


class UnconditionalObjects(VersionedObjects):
    """A store that ignores the version condition, as GCS emulators do, and whose readers of
    index.json wait (briefly) for a second reader to arrive, so two unserialised writers
    would both read the same old index."""

    def __init__(self) -> None:
        super().__init__()
        self.readers = threading.Barrier(2)

    def get(self, key):
        found = super().get(key)
        if key.endswith("index.json"):
            with contextlib.suppress(threading.BrokenBarrierError):
                self.readers.wait(timeout=0.5)
        return found

    def put(self, key, data, *, version, absent):
        return super().put(key, data, version=None, absent=False)


@pytest.mark.parametrize(
    "second_uri",
    [
        "mem://bucket",
        "mem://bucket/images?tag=b",
        "mem://bucket//images/?tag=c",
        "bucket 'bucket' of the memory cloud",  # a plug-in's own way of showing it
    ],
)
def test_threads_of_one_run_change_the_index_in_turn_even_on_an_unconditional_store(second_uri):
    """Each image of a sync opens the layout through its own URI (its own `?tag=`): the
    threads still take one lock for the one index.json, named by the store's bucket_id,
    whatever its `where` shows."""
    objects = UnconditionalObjects()
    second = copy.copy(objects)  # the same objects, seen through another URI
    second.where = second_uri
    writers = [
        threading.Thread(target=BucketLayout(store, "images").change_index, args=(add_tag(t),))
        for store, t in ((objects, "a"), (second, "b"))
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert sorted(json.loads(objects.objects["images/index.json"][0])["manifests"]) == ["a", "b"]


def test_a_store_without_bucket_id_is_told_apart_by_where():
    """A third-party plug-in's store that predates bucket_id still writes its layout; its
    blobs and index.json are named by its `where` as shown."""
    objects = VersionedObjects()
    del objects.bucket_id
    layout = BucketLayout(objects, "images")
    layout.change_index(add_tag("a"))
    assert json.loads(layout.read_index())["manifests"] == ["a"]
    assert layout.location("index.json") == "mem://bucket/images/index.json"


def test_an_index_that_never_settles_is_one_error():
    objects = VersionedObjects()
    layout = BucketLayout(objects, "")
    layout.change_index(add_tag("first"))

    def always_another(key):
        data, version = objects.objects[key]
        objects.objects[key] = (data, version + 1)

    objects.before_put = always_another
    with pytest.raises(OccystrapError, match="index.json kept changing"):
        layout.change_index(add_tag("mine"))


def test_small_objects_go_in_one_put_and_large_ones_stream():
    objects = VersionedObjects()
    layout = BucketLayout(objects, "p/")
    layout.store("blobs/small", 4, lambda: io.BytesIO(b"abcd"))
    layout.store("blobs/large", 12, lambda: io.BytesIO(b"0123456789ab"))
    assert objects.streamed == ["p/blobs/large"]
    assert layout.read("blobs/small") == b"abcd" and layout.present("blobs/large", 12)
    assert not layout.present("blobs/large", 11)


def test_a_source_longer_than_its_size_stores_nothing():
    objects = VersionedObjects()
    layout = BucketLayout(objects, "")
    with pytest.raises(DigestMismatchError):
        layout.store("blobs/small", 4, lambda: io.BytesIO(b"abcde"))
    assert objects.objects == {}


def test_the_marker_is_created_once():
    objects = VersionedObjects()
    layout = BucketLayout(objects, "")
    layout.create_once("oci-layout", b"first")
    layout.create_once("oci-layout", b"second")
    assert layout.read("oci-layout") == b"first" and layout.holds_layout()
