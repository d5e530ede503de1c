"""occystrap: move container images between registries, tarballs, directories and daemons.

The library API, in a few names (see docs/library.md):

    from occystrap import RunSettings, copy
    result = copy("registry://r.example/app:1", "tar://app.tar", RunSettings())
    print(result.digest, result.stats.uploaded)

`copy` moves one image (or a whole multi-platform index) between two URIs; `build_client`
assembles the one HTTP client of a run; `schemes()` lists the endpoint registry; `parse_uri`
turns a URI into an endpoint whose `open_input`/`open_output` give the pipeline's ends;
`parse_filters` builds filters from `-f` specs for `copy(..., filters=...)`.
"""

import sys

__version__ = "0.1.0"

# httpx imports its own command-line client (rich and pygments, about half of httpx's import
# time) whenever rich is installed; occystrap never runs it. A None entry makes that import
# fail, and httpx then defines a stub `httpx.main` instead. Set only if httpx has not loaded.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# Where each exported name lives; loaded on first use so `occystrap --help` stays quick.
_EXPORTS = {
    "copy": "occystrap.library",
    "Endpoint": "occystrap.endpoints",
    "Scheme": "occystrap.endpoints",
    "parse_uri": "occystrap.endpoints",
    "schemes": "occystrap.endpoints",
    "DigestMismatchError": "occystrap.errors",
    "OccystrapError": "occystrap.errors",
    "RegistryError": "occystrap.errors",
    "FilterKind": "occystrap.filters",
    "filter_kinds": "occystrap.filters",
    "parse_filters": "occystrap.filters",
    "Image": "occystrap.image",
    "ImageIndex": "occystrap.image",
    "Layer": "occystrap.image",
    "build_client": "occystrap.middleware.builder",
    "CopyResult": "occystrap.pipeline",
    "RunContext": "occystrap.pipeline",
    "TransferStats": "occystrap.pipeline",
    "run_pipeline": "occystrap.pipeline",
    "RunSettings": "occystrap.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'occystrap' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
