"""`normalize-timestamps[:ts=N]`: every entry's mtime becomes N (default 0), for reproducible
images. The layers are rewritten (see `occystrap.filters.rewrite`), so their digests and
diff_ids are new; the config's `created` and its history's dates become N too."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from occystrap.filters import FilterKind, FilterOption
from occystrap.filters.rewrite import Written, rewrite_layers, set_fields
from occystrap.image import Image, Layer
from occystrap.pipeline import RunContext

# Times a PAX header may carry besides the ustar mtime; all of them would leak the build time.
_TIME_KEYS = ("mtime", "atime", "ctime", "LIBARCHIVE.creationtime")
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last time the config can spell


@dataclass(frozen=True)
class _SetTimes:
    timestamp: int

    def edit(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> Written:
        set_fields(member, _TIME_KEYS, mtime=self.timestamp)
        yield member, data


@dataclass(frozen=True)
class NormalizeTimestamps:
    timestamp: int = 0

    def apply(self, image: Image, ctx: RunContext) -> Image:
        editor = _SetTimes(self.timestamp)

        def editor_for(layer: Layer, scratch: Path) -> _SetTimes:
            return editor

        rewritten = rewrite_layers(image, ctx, editor_for)
        return replace(rewritten, config=self._dated_config(rewritten))

    def _dated_config(self, image: Image) -> bytes:
        """The config with `created` (and each history entry's) set to the timestamp."""
        config = image.config_json
        when = datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if "created" in config:
            config["created"] = when
        for entry in config.get("history") or []:
            if isinstance(entry, dict) and "created" in entry:
                entry["created"] = when
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


FILTER = FilterKind(
    "normalize-timestamps",
    "set every entry's mtime (and the config's dates) to N seconds since 1970, default 0",
    (FilterOption("ts", "N"),),
    lambda options: NormalizeTimestamps(options.integer("ts", 0, 0, _LAST_SECOND)),
)
