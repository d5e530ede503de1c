"""`exclude:pattern=GLOB[,GLOB...]`: drop every entry whose path (or a directory above it)
matches one of the globs (see `occystrap.filters.matching`). The layers are rewritten (see
`occystrap.filters.rewrite`), so their digests and diff_ids are new.

A kept hard link whose target was dropped would point at nothing, so the first such link
becomes a regular file holding the target's content and the others link to it. A glob that
holds a `=` is given as its own `pattern=` (else it reads as another option); no glob can hold
a comma, which separates them.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from occystrap.filters import FilterKind, FilterOption
from occystrap.filters.matching import Glob, compile_glob, normalize_path
from occystrap.filters.rewrite import Written, layer_headers, rewrite_layers, set_fields
from occystrap.image import Image, Layer
from occystrap.pipeline import RunContext


@dataclass
class _Dropper:
    """Drops the matching members of one layer, keeping its hard links whole."""

    globs: Sequence[Glob]
    needed: set[str]  # dropped files that kept hard links point at
    scratch: Path
    saved: dict[str, Path] = field(default_factory=dict)  # dropped file -> its content
    promoted: dict[str, str] = field(default_factory=dict)  # dropped file -> member now holding it

    def edit(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> Written:
        path = normalize_path(member.name)
        if excluded(self.globs, path):
            if path in self.needed and data is not None:
                self.saved[path] = self.scratch / str(len(self.saved))
                with open(self.saved[path], "wb") as copy:
                    shutil.copyfileobj(data, copy)
            return
        target = normalize_path(member.linkname) if member.islnk() else ""
        if target in self.promoted:
            set_fields(member, linkname=self.promoted[target])
        elif target in self.saved:
            self.promoted[target] = member.name
            size = self.saved[target].stat().st_size
            set_fields(member, type=tarfile.REGTYPE, linkname="", size=size)
            with open(self.saved[target], "rb") as content:
                yield member, content
            return
        yield member, data


def excluded(globs: Sequence[Glob], path: str) -> bool:
    return bool(path) and any(glob.matches_path_or_ancestor(path) for glob in globs)


def _links_into_dropped(layer: Layer, globs: Sequence[Glob]) -> set[str]:
    """The dropped files of `layer` that a kept hard link points at (a pass over headers)."""
    dropped: set[str] = set()
    needed: set[str] = set()
    with layer_headers(layer) as headers:
        for member in headers:
            path = normalize_path(member.name)
            if excluded(globs, path):
                if member.isreg():
                    dropped.add(path)
            elif member.islnk() and normalize_path(member.linkname) in dropped:
                needed.add(normalize_path(member.linkname))
    return needed


@dataclass(frozen=True)
class Exclude:
    globs: tuple[Glob, ...]

    def apply(self, image: Image, ctx: RunContext) -> Image:
        def editor_for(layer: Layer, scratch: Path) -> _Dropper:
            return _Dropper(self.globs, _links_into_dropped(layer, self.globs), scratch)

        return rewrite_layers(image, ctx, editor_for)


FILTER = FilterKind(
    "exclude",
    "drop the entries whose path matches a glob (** crosses directories)",
    (FilterOption("pattern", "GLOB", required=True, repeatable=True),),
    lambda options: Exclude(tuple(compile_glob(text) for text in options.values("pattern"))),
)
