"""`inspect:file=PATH`: append one JSON line per image to PATH describing it as it is at this
point of the filter chain (name, tag, digests, each layer's digest, size, media type, diff_id
and created_by), and pass the image on unchanged. Placed between other filters, it shows
what they changed."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from occystrap.digests import sha256_digest
from occystrap.errors import OccystrapError
from occystrap.filters import FilterKind, FilterOption, FilterOptions
from occystrap.filters.search import image_name
from occystrap.image import Image
from occystrap.pipeline import RunContext


def describe_image(image: Image) -> dict:
    """What one inspect line says about `image`."""
    name, tag = image_name(image)
    return {
        "image": name,
        "tag": tag or None,
        "config_digest": image.config_digest,
        # The source's manifest, while it still describes the image (None once rewritten).
        "manifest_digest": sha256_digest(image.manifest) if image.manifest else None,
        "layers": [
            {
                "digest": layer.digest,
                "size": layer.size,
                "media_type": layer.media_type,
                "diff_id": layer.diff_id,
                "created_by": layer.created_by,
            }
            for layer in image.layers
        ],
    }


@dataclass(frozen=True)
class Inspect:
    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def apply(self, image: Image, ctx: RunContext) -> Image:
        line = json.dumps(describe_image(image), sort_keys=True) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
        except OSError as error:
            raise OccystrapError(
                f"inspect cannot append to {self.path}: {error.strerror or error}"
            ) from None
        return image


def _build(options: FilterOptions) -> Inspect:
    return Inspect(Path(options.text("file") or ""))


FILTER = FilterKind(
    "inspect",
    "append one JSON line per image (name, tag, layers) to PATH, changing nothing",
    (FilterOption("file", "PATH", required=True),),
    _build,
)
