"""dir://PATH: images as unpacked `docker save` trees, optionally with a merged rootfs.

With `unique_names` many images share the directory: layers are stored once by diff_id and
`manifest.json` is a catalogue updated under a lock. Each image is staged in a hidden
directory and moved into place only once complete. As a source, the directory is read back
with the same docker-save reader as a tarball (`?image=NAME:TAG` picks one of several).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occystrap.archive import DirectoryMembers
from occystrap.atomic import atomic_file, discard_tree, locked, replace_path
from occystrap.destinations import (
    MARKER_NAME,
    check_directory_destination,
    write_directory_marker,
)
from occystrap.dockersave import (
    DockerSaveLayout,
    DockerSaveReader,
    repo_tag_of,
    repo_tags,
)
from occystrap.endpoints import (
    EXPAND_OPTIONS,
    Endpoint,
    Scheme,
    boolean_option,
    expand_policy,
    non_empty_option,
    path_of,
    query_options,
    split_query,
)
from occystrap.errors import OccystrapError, UsageError, writing_to
from occystrap.extract import DEFAULT_POLICY, ExpandPolicy, apply_layer
from occystrap.image import Image, ImageLike
from occystrap.jsondoc import parse_json
from occystrap.pipeline import RunContext, local_layers
from occystrap.streams import CHUNK_SIZE

LOCK_NAME = ".occystrap.lock"


@dataclass
class DirURI(Endpoint):
    path: Path
    unique_names: bool = False
    expand: bool = False
    image: str | None = None  # as a source: which NAME:TAG of a shared directory
    policy: ExpandPolicy = DEFAULT_POLICY

    def accepts_many_images(self) -> bool:
        """A shared catalogue (unique_names) holds every image of a many-image source."""
        return self.unique_names

    def open_input(self, ctx: RunContext) -> DirectorySource:
        return DirectorySource(self.path, self.image)

    def open_output(self, ctx: RunContext) -> DirectoryOutput:
        check_directory_destination(self.path, allow_catalogue=self.unique_names)
        return DirectoryOutput(self.path, ctx, self.unique_names, self.expand, self.policy)


class DirectorySource:
    def __init__(self, path: Path, image: str | None) -> None:
        self.path, self.image = path, image

    def read(self) -> Image:
        if not (self.path / "manifest.json").is_file():
            raise OccystrapError(
                f"{self.path} holds no image (no manifest.json): write one with"
                " `occystrap process SOURCE dir://PATH` first"
            )
        reader = DockerSaveReader(DirectoryMembers(self.path))
        if self.image is None:
            entries = reader.entries()
            if len(entries) > 1:
                tags = [tag for entry in entries for tag in repo_tags(entry)]
                raise OccystrapError(
                    f"{self.path} holds {len(entries)} images; pick one with ?image=NAME:TAG"
                    f" ({', '.join(tags)})"
                )
        return reader.read(self.image)


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


def _read_json(path: Path, empty: Any) -> Any:
    try:
        return parse_json(path.read_bytes(), str(path))
    except FileNotFoundError:
        return empty


def _write_json(path: Path, document: Any) -> None:
    with atomic_file(path) as handle:
        handle.write(json.dumps(document).encode())


class DirectoryOutput:
    """Writes images into the directory `path` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        ctx: RunContext,
        unique_names: bool = False,
        expand: bool = False,
        policy: ExpandPolicy = DEFAULT_POLICY,
    ) -> None:
        self.path = Path(path)
        self.ctx = ctx
        self.unique_names = unique_names
        self.expand = expand
        self.policy = policy

    def write(self, item: ImageLike) -> None:
        if not isinstance(item, Image):
            raise OccystrapError(f"dir://{self.path} holds single images, not an index")
        with writing_to(self.path):
            self._write(item)

    def _write(self, image: Image) -> None:
        fresh = not self.path.exists() or not any(self.path.iterdir())
        self.path.mkdir(parents=True, exist_ok=True)
        write_directory_marker(self.path, self.unique_names)
        try:
            self._write_into(image)
        except BaseException:
            if fresh:  # a failed first write leaves no skeleton holding only the marker
                (self.path / MARKER_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only if nothing else appeared in it meanwhile
            raise

    def _write_into(self, image: Image) -> None:
        layout = DockerSaveLayout.of(image, repo_tag_of(image.source))
        staging = Path(tempfile.mkdtemp(prefix=".occystrap-partial-", dir=self.path))
        try:
            rootfs = tar_budget = rootfs_budget = None
            if self.expand:
                rootfs = staging / "rootfs"
                rootfs.mkdir()
                # The uncompressed tars, then the files expanded from them, may each take
                # the budget: a decompression bomb is stopped before it fills the disk.
                compressed = sum(layer.size for layer in image.layers)
                tar_budget = self.policy.budget_for(compressed)
                rootfs_budget = self.policy.budget_for(compressed)
            for layer in local_layers(image, self.ctx, tar_budget):
                entry = layout.layers[layer.diff_id]
                tar = self._stage_layer(entry.directory, layer, staging)
                if rootfs is not None:
                    with open(tar, "rb") as stream:
                        report = apply_layer(
                            stream,
                            rootfs,
                            devices=self.policy.devices,
                            setuid=self.policy.setuid,
                            budget=rootfs_budget,
                            what=f"layer {layer.digest}",
                        )
                    self.ctx.stats.add(bytes_uploaded=report.file_bytes)
            (staging / layout.config_name).write_bytes(image.config)
            self.ctx.stats.add(bytes_uploaded=len(image.config))
            self._commit(layout, staging, rootfs, image)
        finally:
            discard_tree(staging)

    def _stage_layer(self, directory: str, layer: Any, staging: Path) -> Path:
        """Where this layer's tar is: already in the directory, or newly staged (and counted
        as written)."""
        existing = self.path / directory / "layer.tar"
        if existing.is_file():
            return existing
        staged = staging / directory / "layer.tar"
        if staged.is_file():
            return staged
        (staging / directory).mkdir()
        with layer.open_tar() as stream, open(staged, "wb") as output:
            shutil.copyfileobj(stream, output, CHUNK_SIZE)
        self.ctx.stats.add(bytes_uploaded=staged.stat().st_size)
        return staged

    def _commit(
        self, layout: DockerSaveLayout, staging: Path, rootfs: Path | None, image: Image
    ) -> None:
        """Move the staged image into place; the catalogue is updated last but for the rootfs."""
        for entry in layout.layers.values():
            staged = staging / entry.directory
            if staged.is_dir():
                for name, data in entry.metadata_files():
                    (staging / name).write_bytes(data)
                try:
                    os.rename(staged, self.path / entry.directory)
                except OSError:
                    if not (self.path / entry.tar_name).is_file():
                        raise  # not merely another image storing the same layer meanwhile
        os.replace(staging / layout.config_name, self.path / layout.config_name)
        with locked(self.path / LOCK_NAME):
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
        source = image.source
        return (
            self.path
            / "rootfs"
            / f"{source.repository.replace('/', '_')}_{source.tag or 'untagged'}"
        )


def _parse(text: str, rest: str) -> DirURI:
    body, query = split_query(rest)
    options = query_options(text, query, ("unique_names", "expand", "image", *EXPAND_OPTIONS))
    expand = boolean_option(text, "expand", options.get("expand"))
    expand_only = [key for key in EXPAND_OPTIONS if key in options]
    if expand_only and not expand:
        raise UsageError(f"{', '.join(expand_only)} in {text!r} only apply with expand=true")
    return DirURI(
        path=path_of(text, body),
        unique_names=boolean_option(text, "unique_names", options.get("unique_names")),
        expand=expand,
        image=non_empty_option(text, "image", options.get("image")),
        policy=expand_policy(text, options),
    )


SCHEME = Scheme(
    "dir",
    "dir://PATH[?unique_names=BOOL&expand=BOOL&devices=BOOL&setuid=BOOL&max_expand=SIZE"
    "&image=NAME:TAG]",
    _parse,
)
