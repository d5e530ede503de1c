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
from occystrap.errors import OccystrapError
from occystrap.outputs.tarball import TarballOutput, default_repo_tag
from occystrap.pipeline import NullProgress

from .image_builder import make_image


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
    TarballOutput(tmp_path / "out.tar").write(image, progress)

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
        assert progress.advanced[layer.diff_id] == len(files[name])
    assert progress.finished == [layer.diff_id for layer in image.layers]
    top = image.layers[-1].diff_id[7:]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": top}}
    assert json.loads(files[f"{top}/json"])["parent"] == image.layers[0].diff_id[7:]


def test_duplicate_layers_are_stored_once(tmp_path):
    image = make_image(tmp_path, [LAYERS[0], LAYERS[1], LAYERS[0]])
    TarballOutput(tmp_path / "out.tar").write(image, NullProgress())
    with tarfile.open(tmp_path / "out.tar") as archive:
        names = archive.getnames()
    first = f"{image.layers[0].diff_id[7:]}/layer.tar"
    assert names.count(first) == 1
    manifest = json.loads(read_tar(tmp_path / "out.tar")["manifest.json"])
    assert manifest[0]["Layers"][0] == manifest[0]["Layers"][2] == first


def test_repo_tags(tmp_path):
    image = make_image(tmp_path, LAYERS[:1])
    assert default_repo_tag(image) == "busybox:latest"
    other = dataclasses.replace(image, name="team/app", tag="v1", extra={"registry": "r.io:5000"})
    assert default_repo_tag(other) == "r.io:5000/team/app:v1"
    hub = dataclasses.replace(image, extra={"registry": "registry-1.docker.io"})
    assert default_repo_tag(hub) == "busybox:latest"
    assert default_repo_tag(dataclasses.replace(image, tag=None)) is None

    TarballOutput(tmp_path / "untagged.tar").write(
        dataclasses.replace(image, tag=None), NullProgress()
    )
    files = read_tar(tmp_path / "untagged.tar")
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == []
    assert "repositories" not in files

    TarballOutput(tmp_path / "named.tar", repo_tag="mine/x:y").write(image, NullProgress())
    files = read_tar(tmp_path / "named.tar")
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["mine/x:y"]


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_corrupt_layer_leaves_nothing_behind(tmp_path):
    image = make_image(tmp_path, LAYERS)
    before = leftovers(tmp_path)
    image.layers[1].path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(OccystrapError):
        TarballOutput(tmp_path / "out.tar").write(image, NullProgress())
    assert leftovers(tmp_path) == before


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_uncompressed_size_is_an_error_and_leaves_nothing(tmp_path, delta):
    image = make_image(tmp_path, LAYERS)
    image.layers[0].uncompressed_size += delta
    before = leftovers(tmp_path)
    with pytest.raises(OccystrapError, match="uncompressed"):
        TarballOutput(tmp_path / "out.tar").write(image, NullProgress())
    assert leftovers(tmp_path) == before
