"""summary://PATH: a destination that writes one line about the image (its config digest
and layer count) to PATH, proving an endpoint plug-in is parsed, opened and written to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from occystrap.endpoints import Endpoint, Scheme, path_of
from occystrap.image import Image, ImageLike


@dataclass
class SummaryURI(Endpoint):
    path: Path

    def open_output(self, ctx: object) -> SummaryOutput:
        return SummaryOutput(self.path)


class SummaryOutput:
    accepts_index = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, item: ImageLike) -> str | None:
        assert isinstance(item, Image)
        self.path.write_text(f"{item.config_digest} {len(item.layers)}\n")
        return None


SCHEME = Scheme(
    "summary",
    "summary://PATH",
    lambda shown, rest: SummaryURI(path_of(shown, rest)),
    source=False,
)
