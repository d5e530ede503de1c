"""The OCI layout reader and writer: index.json parsing (never a traceback), tag selection,
blobs stored once and verified, index.json changed under the lock."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occystrap import compression
from occystrap.archive import DirectoryMembers
from occystrap.atomic import locked
from occystrap.endpoints import parse_uri
from occystrap.endpoints.oci_layout import OciLayoutURI
from occystrap.endpoints.tar import TarSource
from occystrap.errors import DigestMismatchError, FilesystemError, OccystrapError, UsageError
from occystrap.graph import copy_graph
from occystrap.image import FileBlob, Image, ImageIndex, SourceName
from occystrap.mediatypes import OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST
from occystrap.ocilayout import (
    REF_NAME,
    LayoutDestination,
    OciLayoutReader,
    OciLayoutWriter,
    parse_index,
    source_name,
)
from occystrap.registry.ledger import UploadLedger

from .image_builder import context, make_image, read_verified, sha256

LAYERS = [{"etc/hosts": b"localhost\n"}, {"bin/sh": b"#!" + b"y" * 3000}]


class MemoryMembers:
    """A layout held in memory, for parsing tests (layer blobs are never opened)."""

    where = "memory"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def has(self, name: str) -> bool:
        return name in self.files

    def size(self, name: str) -> int:
        return len(self.files[name])

    def read(self, name: str) -> bytes:
        return self.files[name]

    def blob(self, name: str) -> FileBlob:
        return FileBlob(Path("/nonexistent") / name)


MARKER = b'{"imageLayoutVersion": "1.0.0"}'


def write_layout(tmp_path: Path, image: Image, tag: str = "v1", **settings: object) -> Path:
    layout = tmp_path / "layout"
    OciLayoutWriter(layout, context(tmp_path / "work", **settings)).write(image, tag)
    return layout


def tags_of(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_bytes())
    return [entry["annotations"][REF_NAME] for entry in index["manifests"]]


# -- index.json parsing ----------------------------------------------------------------------

_json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json_value = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_descriptor = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([OCI_MANIFEST, OCI_INDEX, "x/y"]) | _json_value,
        "digest": st.sampled_from(["sha256:" + "a" * 64, "sha256:../../x", "md5:00"]) | _json_value,
        "size": st.integers(-2, 10) | _json_value,
        "annotations": st.fixed_dictionaries({REF_NAME: st.sampled_from(["v1", "v2"])})
        | _json_value,
        "platform": _json_value,
    },
)
_index_document = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.integers(0, 3) | _json_value,
        "mediaType": _json_value,
        "manifests": st.lists(_descriptor, max_size=3) | _json_value,
    },
)


@given(st.binary(max_size=200))
@settings(deadline=None)
def test_arbitrary_bytes_as_index_json_raise_only_occystrap_errors(raw):
    try:
        parse_index(raw, "layout")
    except OccystrapError as error:
        assert "\n" not in str(error)


@given(_index_document | _json_value, st.sampled_from([None, "v1", "v2"]))
@settings(deadline=None, max_examples=300)
def test_arbitrary_index_shapes_raise_only_occystrap_errors(document, tag):
    files = {"oci-layout": MARKER, "index.json": json.dumps(document).encode()}
    try:
        OciLayoutReader(MemoryMembers(files)).read(tag)
    except OccystrapError as error:
        assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("index", "fragment"),
    [
        (b"[]", "index.json is not a valid image index (it is not a JSON object)"),
        (b"{", "index.json is not a valid image index (it is not valid JSON)"),
        (b'{"manifests": {}}', "manifests has the wrong type"),
        (b'{"schemaVersion": 1, "manifests": []}', "schema 1"),
    ],
)
def test_bad_index_json_is_a_one_line_error(index, fragment):
    with pytest.raises(OccystrapError) as raised:
        OciLayoutReader(MemoryMembers({"oci-layout": MARKER, "index.json": index})).read()
    assert fragment in str(raised.value) and str(raised.value).startswith("memory: ")


def _entry(digest_char: str, tag: str | None) -> dict:
    entry: dict = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + digest_char * 64, "size": 2}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def _members(*entries: dict) -> MemoryMembers:
    index = {"schemaVersion": 2, "manifests": list(entries)}
    return MemoryMembers({"oci-layout": MARKER, "index.json": json.dumps(index).encode()})


def test_tag_selection():
    reader = OciLayoutReader(_members(_entry("a", "v1"), _entry("b", "v2"), _entry("c", None)))
    assert reader.select("v2").digest == "sha256:" + "b" * 64
    with pytest.raises(UsageError, match=r"holds 3 images; pick one with \?tag=TAG \(v1, v2 and 1"):
        reader.select(None)
    with pytest.raises(UsageError, match="no image tagged 'v3'; it has: v1, v2 and 1 untagged"):
        reader.select("v3")
    only = OciLayoutReader(_members(_entry("a", None)))
    assert only.select(None).digest == "sha256:" + "a" * 64
    twice = OciLayoutReader(_members(_entry("a", "v1"), _entry("b", "v1")))
    with pytest.raises(OccystrapError, match="2 entries of index.json are tagged 'v1'"):
        twice.select("v1")
    with pytest.raises(OccystrapError, match="holds no image"):
        OciLayoutReader(_members()).select(None)


def test_source_names_from_ref_names():
    assert source_name("v1") == SourceName(tag="v1")
    assert source_name("docker.io/library/busybox:1.36") == SourceName("library/busybox", "1.36")
    assert source_name("example.com:5000/team/app:2") == SourceName(
        "team/app", "2", "example.com:5000"
    )
    assert source_name(None) == SourceName()


# -- writing and reading back ------------------------------------------------------------


@pytest.mark.parametrize("kind", [compression.GZIP, compression.NONE, compression.ZSTD])
def test_image_without_manifest_gets_an_oci_manifest_of_its_blobs_as_stored(tmp_path, kind):
    image = make_image(tmp_path, LAYERS, kind=kind)
    layout = write_layout(tmp_path, image)
    read = OciLayoutReader(DirectoryMembers(layout)).read("v1")
    assert isinstance(read, Image) and read.manifest is not None
    manifest = json.loads(read.manifest)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in image.layers
    ]
    expected = {compression.GZIP: OCI_LAYER_GZIP, compression.NONE: OCI_LAYER}.get(
        kind, "application/vnd.oci.image.layer.v1.tar+zstd"
    )
    assert {layer["mediaType"] for layer in manifest["layers"]} == {expected}
    assert read.config == image.config and read.source == SourceName(tag="v1")
    read_verified(read)


def test_a_copy_keeps_the_manifest_bytes_and_stores_each_blob_once(tmp_path):
    image = make_image(tmp_path, [LAYERS[0], LAYERS[1], LAYERS[0]])
    first = write_layout(tmp_path, image)
    kept = OciLayoutReader(DirectoryMembers(first)).read()
    assert isinstance(kept, Image)
    ctx = context(tmp_path / "work2")
    second = tmp_path / "second"
    digest = OciLayoutWriter(second, ctx).write(kept, "copy")
    assert digest == sha256(kept.manifest or b"")
    assert (second / "blobs" / "sha256" / digest[7:]).read_bytes() == kept.manifest
    assert len(list((second / "blobs" / "sha256").iterdir())) == 4  # 2 layers, config, manifest
    assert (ctx.stats.uploaded, ctx.stats.skipped) == (3, 0)  # layers and config, as a push
    again = context(tmp_path / "work3")
    OciLayoutWriter(second, again).write(kept, "copy")
    assert (again.stats.uploaded, again.stats.skipped) == (0, 3)
    assert again.stats.bytes_uploaded == 0
    assert tags_of(second) == ["copy"]


def test_a_wrongly_sized_blob_is_stored_again(tmp_path):
    image = make_image(tmp_path, LAYERS)
    layout = write_layout(tmp_path, image)
    stored = layout / "blobs" / "sha256" / image.layers[0].digest[7:]
    stored.write_bytes(b"truncated")
    OciLayoutWriter(layout, context(tmp_path / "w")).write(image, "v1")
    read = OciLayoutReader(DirectoryMembers(layout)).read("v1")
    assert isinstance(read, Image)
    read_verified(read)


def test_a_corrupt_layer_is_not_stored_and_the_tag_not_written(tmp_path):
    image = make_image(tmp_path, LAYERS)
    layout = write_layout(tmp_path, image, tag="old")
    before = (layout / "index.json").read_bytes()
    broken_path = tmp_path / "broken"
    broken_path.write_bytes(b"not the layer at all")
    broken = dataclasses.replace(
        image.layers[1], digest="sha256:" + "e" * 64, blob=FileBlob(broken_path)
    )
    bad = image.with_layers([image.layers[0], broken])
    with pytest.raises(DigestMismatchError):
        OciLayoutWriter(layout, context(tmp_path / "w")).write(bad, "new")
    assert (layout / "index.json").read_bytes() == before
    names = [path.name for path in (layout / "blobs" / "sha256").iterdir()]
    assert "e" * 64 not in names and not [name for name in names if "partial" in name]


def test_a_tag_waits_for_the_layout_lock(tmp_path):
    image = make_image(tmp_path, LAYERS)
    layout = write_layout(tmp_path, image, tag="a")
    writer = OciLayoutWriter(layout, context(tmp_path / "w"))
    failures: list[BaseException] = []

    def write() -> None:
        try:
            writer.write(image, "b")
        except BaseException as error:  # surfaced by the assertion below
            failures.append(error)

    with locked(layout / "oci-layout"):
        thread = threading.Thread(target=write)
        thread.start()
        thread.join(1.5)
        assert thread.is_alive(), "index.json was changed without holding the lock"
        assert tags_of(layout) == ["a"]
    thread.join(30)
    assert not failures and tags_of(layout) == ["a", "b"]


def _index_of(tmp_path: Path) -> ImageIndex:
    """A two-platform index stored in a layout, read back."""
    layout = tmp_path / "multi"
    entries = []
    for number, arch in enumerate(("amd64", "arm64")):
        image = make_image(tmp_path, [{"arch": arch.encode()}])
        digest = OciLayoutWriter(layout, context(tmp_path / f"w{number}")).write(image, arch)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": (layout / "blobs" / "sha256" / digest[7:]).stat().st_size,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    (layout / "blobs" / "sha256" / sha256(raw)[7:]).write_bytes(raw)
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"] = [
        {"mediaType": OCI_INDEX, "digest": sha256(raw), "size": len(raw),
         "annotations": {REF_NAME: "multi"}}
    ]  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    read = OciLayoutReader(DirectoryMembers(layout)).read()
    assert isinstance(read, ImageIndex) and read.raw == raw
    return read


def test_an_index_is_read_and_written_whole(tmp_path):
    index = _index_of(tmp_path)
    assert [entry.platform.architecture for entry in index.manifests if entry.platform] == [
        "amd64",
        "arm64",
    ]
    read_verified(index.read_entry(index.manifests[1]))
    copy = tmp_path / "copy"
    source = OciLayoutReader(DirectoryMembers(tmp_path / "multi")).manifests()
    copied = copy_graph(
        source, LayoutDestination(OciLayoutWriter(copy, context(tmp_path / "w")), None)
    )
    assert copied.digest == index.digest
    assert tags_of(copy) == ["multi"]
    again = OciLayoutReader(DirectoryMembers(copy)).read("multi")
    assert isinstance(again, ImageIndex) and again.raw == index.raw
    for entry in again.manifests:
        read_verified(again.read_entry(entry))


def test_an_index_entry_that_is_an_index_is_refused(tmp_path):
    index = _index_of(tmp_path)
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    (tmp_path / "multi" / "blobs" / "sha256" / sha256(raw)[7:]).write_bytes(raw)
    nested = dataclasses.replace(
        index.manifests[0], media_type=OCI_INDEX, digest=sha256(raw), size=len(raw)
    )
    with pytest.raises(OccystrapError, match="is itself an index"):
        index.read_entry(nested)


def test_oci_archive_through_tar_source(tmp_path):
    image = make_image(tmp_path, LAYERS)
    layout = write_layout(tmp_path, image)
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    read = TarSource(archive).read()
    assert isinstance(read, Image) and read.config == image.config
    read_verified(read)
    OciLayoutWriter(layout, context(tmp_path / "w")).write(make_image(tmp_path, LAYERS[:1]), "v2")
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    with pytest.raises(UsageError, match=r"holds 2 images; unpack it .*oci-layout://.* \(v1, v2\)"):
        TarSource(archive).read()


def test_uri_options():
    uri = parse_uri("oci-layout:///tmp/x?tag=v1")
    assert isinstance(uri, OciLayoutURI) and (uri.path, uri.tag) == (Path("/tmp/x"), "v1")
    for bad, fragment in [
        ("oci-layout://", "no path"),
        ("oci-layout:///tmp/x?tag=", "has no value"),
        ("oci-layout:///tmp/x?tags=v1", "unknown option 'tags'"),
    ]:
        with pytest.raises(UsageError, match=fragment):
            parse_uri(bad)


def test_destination_refuses_what_is_not_a_layout(tmp_path):
    file = tmp_path / "file"
    file.write_bytes(b"x")
    ctx = context(tmp_path / "w")
    with pytest.raises(FilesystemError, match="is a file; oci-layout:// needs a directory"):
        OciLayoutURI(file).open_output(ctx)
    with pytest.raises(FilesystemError, match="is a file, so .* cannot be created"):
        OciLayoutURI(file / "layout").open_output(ctx)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes").write_bytes(b"x")
    with pytest.raises(FilesystemError, match="is not empty and is not an OCI image layout"):
        OciLayoutURI(tmp_path / "other").open_output(ctx)
    OciLayoutURI(tmp_path / "new").open_output(ctx)  # created when written
    assert not (tmp_path / "new").exists()


def test_a_schema1_manifest_in_a_layout_is_a_one_line_error(tmp_path):
    layout = write_layout(tmp_path, make_image(tmp_path, LAYERS))
    raw = json.dumps({"schemaVersion": 1, "fsLayers": []}).encode()
    (layout / "blobs" / "sha256" / sha256(raw)[7:]).write_bytes(raw)
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"][0].update(digest=sha256(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(OccystrapError, match=f"^{layout}: manifest sha256:.*schema 1") as raised:
        OciLayoutReader(DirectoryMembers(layout)).read()
    assert "\n" not in str(raised.value)


class FlakyRemoteBlob:
    """A remote blob whose first transfer arrives corrupted."""

    local = False

    def __init__(self, path: Path) -> None:
        self.path, self.opened = path, 0

    def open(self):
        self.opened += 1
        data = self.path.read_bytes()
        return io.BytesIO(data[:-1] + bytes([data[-1] ^ 1]) if self.opened == 1 else data)


def test_a_remote_layer_corrupted_in_transit_is_fetched_once_more(tmp_path):
    image = make_image(tmp_path, LAYERS)
    flaky = FlakyRemoteBlob(image.layers[0].blob.path)  # type: ignore[attr-defined]
    layers = [dataclasses.replace(image.layers[0], blob=flaky), image.layers[1]]
    remote = Image(image.source, image.config, tuple(layers))
    layout, ctx = tmp_path / "layout", context(tmp_path / "work")
    OciLayoutWriter(layout, ctx).write(remote, "v1")
    assert flaky.opened == 2
    # The blob as stored counts once in the bytes written, not once per transfer.
    stored = sum(layer.size for layer in image.layers) + len(image.config)
    assert ctx.stats.bytes_uploaded == stored
    read = OciLayoutReader(DirectoryMembers(layout)).read("v1")
    assert isinstance(read, Image)
    read_verified(read)


class GatedBlob:
    """A blob whose first reader holds its transfer open until `go` is set; `opened` counts
    the transfers, under `changed`."""

    local = True

    def __init__(self, path: Path) -> None:
        self.path, self.opened = path, 0
        self.changed, self.go = threading.Condition(), threading.Event()

    def open(self):
        with self.changed:
            self.opened += 1
            first = self.opened == 1
            self.changed.notify_all()
        if first:
            assert self.go.wait(30)
        return open(self.path, "rb")


class ObservedLedger(UploadLedger):
    """The run's ledger, telling `blob` each time a writer asks for a turn."""

    def __init__(self, blob: GatedBlob) -> None:
        super().__init__()
        self.blob, self.asked = blob, 0

    def turn(self, registry: str, digest: str):
        with self.blob.changed:
            self.asked += 1
            self.blob.changed.notify_all()
        return super().turn(registry, digest)


def test_images_of_one_run_sharing_a_layer_store_it_once(tmp_path):
    """Two images of one run (a sync) write one layer into one layout at the same moment:
    the second waits for the first's transfer and then finds the blob there, instead of
    fetching and storing it again."""
    image = make_image(tmp_path, LAYERS[:1])
    gated = GatedBlob(image.layers[0].blob.path)  # type: ignore[attr-defined]
    shared = image.with_layers([dataclasses.replace(image.layers[0], blob=gated)])
    ctx = context(tmp_path / "w")
    ctx.uploads = ledger = ObservedLedger(gated)
    layout = tmp_path / "layout"
    writers = [
        threading.Thread(target=OciLayoutWriter(layout, ctx).write, args=(shared, tag))
        for tag in ("a", "b")
    ]
    writers[0].start()
    with gated.changed:
        assert gated.changed.wait_for(lambda: gated.opened == 1, 30)
    writers[1].start()
    with gated.changed:  # the second writer waits for its turn, or (wrongly) fetches too
        assert gated.changed.wait_for(lambda: ledger.asked == 2 or gated.opened == 2, 30)
    gated.go.set()
    for writer in writers:
        writer.join(30)
    assert gated.opened == 1
    assert (ctx.stats.uploaded, ctx.stats.skipped) == (2, 2)  # layer and config once each
    assert ctx.stats.bytes_uploaded == image.layers[0].size + len(image.config)
    assert sorted(tags_of(layout)) == ["a", "b"]
