"""occystrap: move container images between registries, tarballs, directories and daemons.

The library API, in a few names (see docs/library.md):

    from occystrap import RunSettings, copy
    result = copy("registry://r.example/app:1", "tar://app.tar", RunSettings())
    print(result.digest, result.stats.uploaded)

`copy` moves one image (or a whole multi-platform index) between two URIs, `copy_many` every
image a source names (quay://), `search` finds paths in layers and `inspect` reads metadata,
each returning a typed result (occystrap.library); `build_client`
assembles the one HTTP client of a run; `schemes()` lists the endpoint registry; `parse_uri`
turns a URI into an endpoint whose `open_input`/`open_output` give the pipeline's ends;
`parse_filters` builds filters from `-f` specs for `copy(..., filters=...)`.
"""

import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# httpx imports its own command-line client (rich and pygments, about half of httpx's import
# time) whenever rich is installed; occystrap never runs it. A None entry makes that import
# fail, and httpx then defines a stub `httpx.main` instead. Set only if httpx has not loaded.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

if TYPE_CHECKING:  # what type checkers see; at run time each name loads on first use
    from occystrap.cancel import Cancellation, Cancelled
    from occystrap.endpoints import Endpoint, Scheme, parse_uri, schemes
    from occystrap.errors import DigestMismatchError, OccystrapError, RegistryError, UsageError
    from occystrap.filters import FilterKind, filter_kinds, parse_filters
    from occystrap.image import Image, ImageIndex, Layer
    from occystrap.library import (
        BulkResult,
        ImageInfo,
        ImageOutcome,
        LayerHits,
        SearchResult,
        copy,
        copy_many,
        inspect,
        search,
    )
    from occystrap.middleware.builder import ChainSettings, build_client
    from occystrap.pipeline import CopyResult, RunContext, TransferStats, run_pipeline
    from occystrap.settings import RunSettings

# Where each exported name lives; loaded on first use so `occystrap --help` stays quick.
_EXPORTS = {
    "BulkResult": "occystrap.library",
    "ImageInfo": "occystrap.library",
    "ImageOutcome": "occystrap.library",
    "LayerHits": "occystrap.library",
    "SearchResult": "occystrap.library",
    "copy": "occystrap.library",
    "copy_many": "occystrap.library",
    "inspect": "occystrap.library",
    "search": "occystrap.library",
    "Cancellation": "occystrap.cancel",
    "Cancelled": "occystrap.cancel",
    "Endpoint": "occystrap.endpoints",
    "Scheme": "occystrap.endpoints",
    "parse_uri": "occystrap.endpoints",
    "schemes": "occystrap.endpoints",
    "DigestMismatchError": "occystrap.errors",
    "OccystrapError": "occystrap.errors",
    "RegistryError": "occystrap.errors",
    "UsageError": "occystrap.errors",
    "FilterKind": "occystrap.filters",
    "filter_kinds": "occystrap.filters",
    "parse_filters": "occystrap.filters",
    "Image": "occystrap.image",
    "ImageIndex": "occystrap.image",
    "Layer": "occystrap.image",
    "ChainSettings": "occystrap.middleware.builder",
    "build_client": "occystrap.middleware.builder",
    "CopyResult": "occystrap.pipeline",
    "RunContext": "occystrap.pipeline",
    "TransferStats": "occystrap.pipeline",
    "run_pipeline": "occystrap.pipeline",
    "RunSettings": "occystrap.settings",
}
__all__ = [
    "BulkResult",
    "Cancellation",
    "Cancelled",
    "ChainSettings",
    "CopyResult",
    "DigestMismatchError",
    "Endpoint",
    "FilterKind",
    "Image",
    "ImageIndex",
    "ImageInfo",
    "ImageOutcome",
    "Layer",
    "LayerHits",
    "OccystrapError",
    "RegistryError",
    "RunContext",
    "RunSettings",
    "Scheme",
    "SearchResult",
    "TransferStats",
    "UsageError",
    "build_client",
    "copy",
    "copy_many",
    "filter_kinds",
    "inspect",
    "parse_filters",
    "parse_uri",
    "run_pipeline",
    "schemes",
    "search",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'occystrap' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
