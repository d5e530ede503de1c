"""`search:pattern=P[,regex=true][,script_friendly=true]`: print the paths of each layer that
match, passing the image through unchanged. The `search` command prints the same lines.

A whiteout (`dir/.wh.name`) is shown as the deletion of `dir/name`, and an opaque marker
(`dir/.wh..wh..opq`) as the deletion of what lower layers hold under `dir`; the pattern is
matched against the path deleted. Each layer is streamed through once (verified) and not kept.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from occystrap.extract import OPAQUE_MARKER, WHITEOUT_PREFIX
from occystrap.filters import FilterKind, FilterOption, FilterOptions
from occystrap.filters.matching import PathMatcher, compile_matcher, normalize_path
from occystrap.filters.rewrite import layer_headers
from occystrap.image import Image, Layer
from occystrap.pipeline import ProgressSink, RunContext
from occystrap.progress import TerminalProgress

_print_lock = threading.Lock()  # lines of one layer stay together when images run in parallel


@dataclass(frozen=True)
class Hit:
    member: str  # the entry's path in the layer, normalized
    path: str  # the path it is about: for a whiteout, the path it deletes
    deletes: bool = False  # a whiteout
    opaque: bool = False  # an opaque marker: lower layers' content of `path` is hidden


def _hit_for(member: str) -> Hit:
    parent, _, name = member.rpartition("/")
    if name == OPAQUE_MARKER:
        return Hit(member, parent, deletes=True, opaque=True)
    if name.startswith(WHITEOUT_PREFIX):
        deleted = name[len(WHITEOUT_PREFIX) :]
        return Hit(member, f"{parent}/{deleted}" if parent else deleted, deletes=True)
    return Hit(member, member)


def layer_hits(layer: Layer, matcher: PathMatcher) -> list[Hit]:
    """The matching entries of one layer (streamed and verified, not kept; a tar already on
    disk is only read header by header)."""
    hits = []
    with layer_headers(layer) as headers:
        for member in headers:
            path = normalize_path(member.name)
            hit = _hit_for(path) if path else None
            if hit is not None and hit.path and matcher.matches(hit.path):
                hits.append(hit)
    return hits


def image_hits(
    image: Image, matcher: PathMatcher, parallel: int
) -> Iterator[tuple[int, Layer, list[Hit]]]:
    """(position, layer, hits) for every layer in order; up to `parallel` layers are read at
    once, and a layer that appears twice is read once."""
    distinct = {layer.digest: layer for layer in image.layers}
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="search") as pool:
        found = {
            digest: pool.submit(layer_hits, layer, matcher) for digest, layer in distinct.items()
        }
        for position, layer in enumerate(image.layers, 1):
            yield position, layer, found[layer.digest].result()


def image_name(image: Image) -> tuple[str, str]:
    """(name, tag) as the script-friendly lines spell them."""
    source = image.source
    name = f"{source.registry}/{source.repository}" if source.registry else source.repository
    return name, source.tag or ""


def format_hits(
    image: Image, position: int, layer: Layer, hits: list[Hit], script_friendly: bool
) -> list[str]:
    """The lines one layer's hits print as: grouped under the layer, or for scripts one
    `IMAGE:TAG:LAYER_DIGEST:PATH` per hit (PATH then as written in the layer, whiteouts
    keeping their `.wh.` name)."""
    if script_friendly:
        name, tag = image_name(image)
        return [f"{name}:{tag}:{layer.digest}:/{hit.member}" for hit in hits]
    if not hits:
        return []
    lines = [f"{image.source} layer {position}/{len(image.layers)} {layer.digest}:"]
    for hit in hits:
        if hit.opaque:
            lines.append(f"  /{hit.path}/ (opaque: lower layers' content deleted)")
        elif hit.deletes:
            lines.append(f"  /{hit.path} (deleted)")
        else:
            lines.append(f"  /{hit.member}")
    return lines


def print_hits(
    image: Image,
    matcher: PathMatcher,
    parallel: int,
    script_friendly: bool,
    out: TextIO,
    progress: ProgressSink | None = None,
) -> int:
    """Print every layer's hits (above a live progress display, if any); return how many."""
    count = 0
    for position, layer, hits in image_hits(image, matcher, parallel):
        text = "".join(
            f"{line}\n" for line in format_hits(image, position, layer, hits, script_friendly)
        )
        if text:
            with _print_lock:
                if isinstance(progress, TerminalProgress):
                    progress.write_above(text, out)
                else:
                    out.write(text)
                    out.flush()
        count += len(hits)
    return count


@dataclass(frozen=True)
class Search:
    matcher: PathMatcher
    script_friendly: bool = False

    def apply(self, image: Image, ctx: RunContext) -> Image:
        settings = ctx.settings
        print_hits(
            image, self.matcher, settings.parallel, self.script_friendly, sys.stdout, ctx.progress
        )
        return image


def _build(options: FilterOptions) -> Search:
    pattern = options.text("pattern") or ""
    matcher = compile_matcher(pattern, options.boolean("regex"))
    return Search(matcher, options.boolean("script_friendly"))


FILTER = FilterKind(
    "search",
    "print the paths of each layer that match (glob, or regex=true), changing nothing",
    (
        FilterOption("pattern", "P", required=True),
        FilterOption("regex", "BOOL"),
        FilterOption("script_friendly", "BOOL"),
    ),
    _build,
)
