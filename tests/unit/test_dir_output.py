"""The directory output: the unpacked docker-save tree, shared catalogues, expanded rootfs."""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from occystrap.endpoints.dir import DirectoryOutput, merge_catalogue
from occystrap.endpoints.tar import TarSource
from occystrap.errors import OccystrapError
from occystrap.image import SourceName

from .image_builder import context, make_image, read_verified, sha256

LAYERS = [
    {"etc/hosts": b"localhost\n", "etc/old": b"gone soon", "bin/sh": b"shell"},
    {"etc/.wh.old": b"", "bin/ash": "sh", "etc/hosts": b"upper\n"},
]


def tree(directory: Path) -> set[str]:
    """Every path under `directory`, relative, hidden staging entries included."""
    return {
        str((Path(root) / name).relative_to(directory))
        for root, dirs, files in os.walk(directory)
        for name in dirs + files
    }


def test_default_layout_matches_the_tarball_tree(tmp_path):
    image = make_image(tmp_path, LAYERS)
    out = tmp_path / "out"
    DirectoryOutput(out, context(tmp_path / "work")).write(image)
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    assert (out / manifest[0]["Config"]).read_bytes() == image.config
    for name, layer in zip(manifest[0]["Layers"], image.layers, strict=True):
        assert sha256((out / name).read_bytes()) == layer.diff_id
    assert not any(name.startswith(".occystrap-partial") for name in os.listdir(out))
    assert not (out / "rootfs").exists()


def test_default_directory_reads_back_as_a_tarball_tree(tmp_path):
    """The directory holds exactly the files a tarball would: tar it and read it back."""
    image = make_image(tmp_path, LAYERS)
    out = tmp_path / "out"
    DirectoryOutput(out, context(tmp_path / "work")).write(image)
    with tarfile.open(tmp_path / "dir.tar", "w") as archive:
        for name in sorted(os.listdir(out)):
            if not name.startswith("."):
                archive.add(out / name, arcname=name)
    read = read_verified(TarSource(tmp_path / "dir.tar").read())
    assert [layer.diff_id for layer in read.layers] == [layer.diff_id for layer in image.layers]


def test_expand_builds_the_merged_rootfs_with_whiteouts(tmp_path):
    image = make_image(tmp_path, LAYERS)
    out = tmp_path / "out"
    DirectoryOutput(out, context(tmp_path / "work"), expand=True).write(image)
    rootfs = out / "rootfs"
    assert tree(rootfs) == {"etc", "etc/hosts", "bin", "bin/sh", "bin/ash"}
    assert (rootfs / "etc/hosts").read_bytes() == b"upper\n"
    assert os.readlink(rootfs / "bin/ash") == "sh"


def test_unique_names_share_layers_and_keep_a_catalogue(tmp_path):
    base = make_image(tmp_path, LAYERS[:1])
    first = dataclasses.replace(base, source=SourceName("library/busybox", "one"))
    second = make_image(tmp_path, LAYERS, tag="two")
    out = tmp_path / "out"
    output = DirectoryOutput(out, context(tmp_path / "work"), unique_names=True, expand=True)
    output.write(first)
    shared = out / base.layers[0].diff_id[7:] / "layer.tar"
    inode = shared.stat().st_ino
    output.write(second)
    assert shared.stat().st_ino == inode  # the shared layer was not rewritten
    catalogue = json.loads((out / "manifest.json").read_bytes())
    assert sorted(tag for entry in catalogue for tag in entry["RepoTags"]) == [
        "busybox:one",
        "busybox:two",
    ]
    assert (out / "rootfs/library_busybox_one/etc/old").exists()
    assert not (out / "rootfs/library_busybox_two/etc/old").exists()
    repositories = json.loads((out / "repositories").read_bytes())
    assert set(repositories["busybox"]) == {"one", "two"}

    output.write(second)  # rewriting an image replaces its entry
    assert len(json.loads((out / "manifest.json").read_bytes())) == 2


def test_parallel_writers_do_not_clobber_the_catalogue(tmp_path):
    images = [make_image(tmp_path, [{f"f{i}": b"x" * i}], tag=f"t{i}") for i in range(8)]
    output = DirectoryOutput(tmp_path / "out", context(tmp_path / "work"), unique_names=True)
    threads = [threading.Thread(target=output.write, args=(i,)) for i in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    catalogue = json.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert sorted(entry["RepoTags"][0] for entry in catalogue) == [
        f"busybox:t{i}" for i in range(8)
    ]


def test_merge_catalogue_keeps_one_entry_per_config_with_every_tag():
    old = [
        {"Config": "a.json", "RepoTags": ["x:1"]},
        {"Config": "b.json", "RepoTags": ["x:2", "x:3"]},
        {"Config": "c.json", "RepoTags": []},
    ]
    merged = merge_catalogue(old, {"Config": "a.json", "RepoTags": ["x:2"]})
    assert merged == [
        {"Config": "b.json", "RepoTags": ["x:3"]},
        {"Config": "c.json", "RepoTags": []},
        {"Config": "a.json", "RepoTags": ["x:1", "x:2"]},
    ]


def test_same_image_under_two_names_keeps_both_tags():
    first = merge_catalogue([], {"Config": "a.json", "RepoTags": ["quay.io/org/one:1"]})
    both = merge_catalogue(first, {"Config": "a.json", "RepoTags": ["quay.io/org/two:1"]})
    assert both == [{"Config": "a.json", "RepoTags": ["quay.io/org/one:1", "quay.io/org/two:1"]}]


def test_failure_leaves_no_new_files(tmp_path):
    good = make_image(tmp_path, LAYERS[:1], tag="good")
    out = tmp_path / "out"
    output = DirectoryOutput(out, context(tmp_path / "work"), unique_names=True, expand=True)
    output.write(good)
    before = tree(out), (out / "manifest.json").read_bytes()
    bad = make_image(tmp_path, LAYERS, tag="bad")
    bad.layers[1].blob.path.write_bytes(b"\x1f\x8b broken")
    with pytest.raises(OccystrapError):
        output.write(bad)
    assert (tree(out), (out / "manifest.json").read_bytes()) == before


def test_a_directory_is_a_source_again(tmp_path):
    from occystrap.endpoints.dir import DirectorySource

    image = make_image(tmp_path, LAYERS)
    out = tmp_path / "out"
    DirectoryOutput(out, context(tmp_path / "work")).write(image)
    read = read_verified(DirectorySource(out, None).read())
    assert read.config == image.config
    assert [layer.diff_id for layer in read.layers] == [layer.diff_id for layer in image.layers]
    assert (read.source.repository, read.source.tag) == ("library/busybox", "latest")


def test_a_shared_directory_needs_image_to_pick_one(tmp_path):
    from occystrap.endpoints.dir import DirectorySource

    out = tmp_path / "out"
    output = DirectoryOutput(out, context(tmp_path / "work"), unique_names=True)
    output.write(make_image(tmp_path, LAYERS[:1], tag="one"))
    output.write(make_image(tmp_path, LAYERS, tag="two"))
    with pytest.raises(OccystrapError, match=r"holds 2 images; pick one with \?image="):
        DirectorySource(out, None).read()
    two = read_verified(DirectorySource(out, "busybox:two").read())
    assert len(two.layers) == 2
    with pytest.raises(OccystrapError, match="no image tagged 'busybox:three'"):
        DirectorySource(out, "busybox:three").read()
    with pytest.raises(OccystrapError, match="no manifest.json"):
        DirectorySource(tmp_path / "empty", None).read()


def test_process_help_lists_the_uri_forms():
    from click.testing import CliRunner

    from occystrap.cli import main

    result = CliRunner().invoke(main, ["process", "--help"], standalone_mode=False)
    assert "Sources:" in result.output and "Destinations:" in result.output
    for form in ("registry://HOST/REPO", "tar://PATH", "dir://PATH", "quay://ORG"):
        assert form in result.output
