"""A filter plug-in that retags the image, to prove discovery through the `occystrap.filters`
entry-point group."""

from dataclasses import dataclass, replace

from occystrap.filters import FilterKind, FilterOption, FilterOptions
from occystrap.image import Image
from occystrap.pipeline import RunContext


@dataclass(frozen=True)
class Retag:
    tag: str

    def apply(self, image: Image, ctx: RunContext) -> Image:
        return replace(image, source=replace(image.source, tag=self.tag))


def _build(options: FilterOptions) -> Retag:
    return Retag(options.text("tag") or "")


RETAG = FilterKind(
    "retag", "name the image with another tag", (FilterOption("tag", "TAG", required=True),), _build
)
