"""occystrap: move container images between registries, tarballs, directories and daemons.

The library API, in a few names (see docs/library.md):

    from occystrap import RunSettings, copy
    result = copy("registry://r.example/app:1", "tar://app.tar", RunSettings())
    print(result.digest, result.stats.uploaded)

`copy` moves one image (or a whole multi-platform index) between two URIs; `build_client`
assembles the one HTTP client of a run; `schemes()` lists the endpoint registry; `parse_uri`
turns a URI into an endpoint whose `open_input`/`open_output` give the pipeline's ends.
"""

__version__ = "0.1.0"

from occystrap.commands import copy  # noqa: E402
from occystrap.endpoints import Endpoint, Scheme, parse_uri, schemes  # noqa: E402
from occystrap.errors import DigestMismatchError, OccystrapError, RegistryError  # noqa: E402
from occystrap.image import Image, ImageIndex, Layer  # noqa: E402
from occystrap.middleware.builder import build_client  # noqa: E402
from occystrap.pipeline import CopyResult, RunContext, TransferStats, run_pipeline  # noqa: E402
from occystrap.settings import RunSettings  # noqa: E402

__all__ = [
    "CopyResult",
    "DigestMismatchError",
    "Endpoint",
    "Image",
    "ImageIndex",
    "Layer",
    "OccystrapError",
    "RegistryError",
    "RunContext",
    "RunSettings",
    "Scheme",
    "TransferStats",
    "build_client",
    "copy",
    "parse_uri",
    "run_pipeline",
    "schemes",
]
