"""The docker-save tarball output: layout, tags, dedup, streaming sizes, atomicity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from occystrap import compression
from occystrap.dockersave import repo_tag_of
from occystrap.errors import OccystrapError
from occystrap.image import SourceName
from occystrap.pipeline import NullProgress

from .image_builder import make_image, save_tar


class RecordingProgress(NullProgress):
    def __init__(self) -> None:
        self.advanced: dict[str, int] = {}
        self.finished: list[str] = []

    def advance(self, key: str, nbytes: int) -> None:
        self.advanced[key] = self.advanced.get(key, 0) + nbytes

    def finish(self, key: str) -> None:
        self.finished.append(key)


LAYERS = [{"etc/hosts": b"localhost\n"}, {"bin/sh": b"#!" + b"x" * 5000}]


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {
            member.name: archive.extractfile(member).read() for member in archive if member.isfile()
        }


@pytest.mark.parametrize("kind", [compression.GZIP, compression.ZSTD, compression.NONE])
@pytest.mark.parametrize("known_sizes", [True, False])
def test_writes_docker_save_layout_with_uncompressed_layers(tmp_path, kind, known_sizes):
    image = make_image(tmp_path, LAYERS, kind=kind, known_sizes=known_sizes)
    progress = RecordingProgress()
    save_tar(image, tmp_path / "out.tar", progress)

    files = read_tar(tmp_path / "out.tar")
    manifest = json.loads(files["manifest.json"])
    config_hex = image.config_digest[7:]
    layer_names = [f"{layer.diff_id[7:]}/layer.tar" for layer in image.layers]
    assert manifest == [
        {"Config": f"{config_hex}.json", "RepoTags": ["busybox:latest"], "Layers": layer_names}
    ]
    assert files[f"{config_hex}.json"] == image.config
    for layer, name in zip(image.layers, layer_names, strict=True):
        assert f"sha256:{hashlib.sha256(files[name]).hexdigest()}" == layer.diff_id
        assert files[name.replace("layer.tar", "VERSION")] == b"1.0"
        assert progress.advanced[f"write:{layer.diff_id}"] == len(files[name])
    written = [key for key in progress.finished if key.startswith("write:")]
    assert written == [f"write:{layer.diff_id}" for layer in image.layers]
    top = image.layers[-1].diff_id[7:]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": top}}
    assert json.loads(files[f"{top}/json"])["parent"] == image.layers[0].diff_id[7:]


def test_duplicate_layers_are_stored_once(tmp_path):
    image = make_image(tmp_path, [LAYERS[0], LAYERS[1], LAYERS[0]])
    save_tar(image, tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar") as archive:
        names = archive.getnames()
    first = f"{image.layers[0].diff_id[7:]}/layer.tar"
    assert names.count(first) == 1
    manifest = json.loads(read_tar(tmp_path / "out.tar")["manifest.json"])
    assert manifest[0]["Layers"][0] == manifest[0]["Layers"][2] == first


def test_repo_tags(tmp_path):
    image = make_image(tmp_path, LAYERS[:1])
    assert repo_tag_of(image.source) == "busybox:latest"
    assert repo_tag_of(SourceName("team/app", "v1", "r.io:5000")) == "r.io:5000/team/app:v1"
    assert repo_tag_of(SourceName("library/busybox", "latest", "registry-1.docker.io")) == (
        "busybox:latest"
    )
    untagged = dataclasses.replace(image, source=SourceName("library/busybox", None))
    assert repo_tag_of(untagged.source) is None

    save_tar(untagged, tmp_path / "untagged.tar")
    files = read_tar(tmp_path / "untagged.tar")
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == []
    assert "repositories" not in files


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_corrupt_layer_leaves_nothing_behind(tmp_path):
    image = make_image(tmp_path, LAYERS)
    before = leftovers(tmp_path)
    image.layers[1].blob.path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(OccystrapError):
        save_tar(image, tmp_path / "out.tar")
    assert leftovers(tmp_path) == before


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_uncompressed_size_is_an_error_and_leaves_nothing(tmp_path, delta):
    image = make_image(tmp_path, LAYERS)
    first = image.layers[0]
    wrong = dataclasses.replace(first, uncompressed_size=first.uncompressed_size + delta)
    image = dataclasses.replace(image, layers=(wrong, *image.layers[1:]))
    before = leftovers(tmp_path)
    with pytest.raises(OccystrapError, match="uncompressed"):
        save_tar(image, tmp_path / "out.tar")
    assert leftovers(tmp_path) == before
