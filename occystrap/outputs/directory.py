"""Write images into a directory: the `docker save` tree unpacked, optionally a merged rootfs.

With `unique_names` many images share the directory: layers are stored once by
diff_id and `manifest.json` is a catalogue updated under a lock. Each image is
staged in a hidden directory and moved into place only once complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from occystrap.atomic import CHUNK_SIZE, atomic_file, replace_path
from occystrap.extract import apply_layer
from occystrap.outputs.tarball import (
    DockerSaveLayout,
    LayerEntry,
    default_repo_tag,
    reporting_layer_stream,
)
from occystrap.pipeline import Image, ProgressSink

LOCK_NAME = ".occystrap.lock"


def merge_catalogue(existing: list, entry: dict) -> list:
    """Add `entry` to a manifest.json catalogue, as docker does: one entry per config.

    An older entry for the same config passes its tags on to `entry`; other older entries
    lose any tag `entry` now carries, and those left with no tags at all are dropped.
    """
    new_tags = set(entry["RepoTags"])
    carried: list[str] = []
    merged = []
    for old in existing:
        if not isinstance(old, dict):
            continue
        old_tags = old.get("RepoTags") or []
        if old.get("Config") == entry["Config"]:
            carried += [tag for tag in old_tags if tag not in new_tags and tag not in carried]
            continue
        kept_tags = [tag for tag in old_tags if tag not in new_tags]
        if old_tags and not kept_tags:
            continue
        merged.append({**old, "RepoTags": kept_tags})
    merged.append({**entry, "RepoTags": carried + entry["RepoTags"]})
    return merged


def merge_repositories(existing: dict, new: dict) -> dict:
    """Add the name -> tag -> layer entries of `new` to a `repositories` mapping."""
    merged = {name: dict(tags) for name, tags in existing.items() if isinstance(tags, dict)}
    for name, tags in new.items():
        merged.setdefault(name, {}).update(tags)
    return merged


def _read_json(path: Path, empty):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return empty


def _write_json(path: Path, document) -> None:
    with atomic_file(path) as handle:
        handle.write(json.dumps(document).encode())


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory's catalogue across processes."""
    with open(directory / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class DirectoryOutput:
    """Writes images into the directory `path` (see the module docstring)."""

    def __init__(self, path: Path, unique_names: bool = False, expand: bool = False) -> None:
        self.path = Path(path)
        self.unique_names = unique_names
        self.expand = expand

    def write(self, image: Image, progress: ProgressSink) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        layout = DockerSaveLayout.of(image, default_repo_tag(image))
        staging = Path(tempfile.mkdtemp(prefix=".occystrap-partial-", dir=self.path))
        try:
            layer_tars = {
                entry.directory: self._stage_layer(entry, staging, progress)
                for entry in layout.layers
            }
            (staging / layout.config_name).write_bytes(image.config)
            rootfs = None
            if self.expand:
                rootfs = staging / "rootfs"
                rootfs.mkdir()
                for layer in image.layers:
                    with open(layer_tars[layer.diff_id.partition(":")[2]], "rb") as stream:
                        apply_layer(stream, rootfs)
            self._commit(layout, staging, rootfs, image)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage_layer(self, entry: LayerEntry, staging: Path, progress: ProgressSink) -> Path:
        """Where this layer's tar is: already in the directory, or newly staged."""
        existing = self.path / entry.tar_name
        if existing.is_file():
            return existing
        (staging / entry.directory).mkdir()
        for name, data in entry.metadata_files():
            (staging / name).write_bytes(data)
        staged = staging / entry.tar_name
        with (
            reporting_layer_stream(entry.layer, progress, entry.layer.uncompressed_size) as stream,
            open(staged, "wb") as output,
        ):
            shutil.copyfileobj(stream, output, CHUNK_SIZE)
        return staged

    def _commit(
        self, layout: DockerSaveLayout, staging: Path, rootfs: Path | None, image: Image
    ) -> None:
        """Move the staged image into place; the catalogue is updated last but for the rootfs."""
        for entry in layout.layers:
            staged = staging / entry.directory
            if staged.is_dir():
                try:
                    os.rename(staged, self.path / entry.directory)
                except OSError:
                    if not (self.path / entry.tar_name).is_file():
                        raise  # not merely another image storing the same layer meanwhile
        os.replace(staging / layout.config_name, self.path / layout.config_name)
        with _locked(self.path):
            manifest = [layout.manifest_entry]
            repositories = layout.repositories
            if self.unique_names:
                manifest = merge_catalogue(
                    _read_json(self.path / "manifest.json", []), layout.manifest_entry
                )
                repositories = merge_repositories(
                    _read_json(self.path / "repositories", {}), repositories
                )
            _write_json(self.path / "manifest.json", manifest)
            if repositories:
                _write_json(self.path / "repositories", repositories)
        if rootfs is not None:
            final = self.rootfs_path(image)
            final.parent.mkdir(parents=True, exist_ok=True)
            replace_path(rootfs, final)

    def rootfs_path(self, image: Image) -> Path:
        """Where the expanded filesystem goes: `rootfs/`, or `rootfs/<name>_<tag>/` if shared."""
        if not self.unique_names:
            return self.path / "rootfs"
        return self.path / "rootfs" / f"{image.name.replace('/', '_')}_{image.tag or 'untagged'}"
