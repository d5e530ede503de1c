"""Running one job per image, several at once, so one failed image does not stop the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from occystrap.cancel import cancellable_pool
from occystrap.errors import OccystrapError
from occystrap.pipeline import ProgressSink
from occystrap.quay.api import QuayImage

LOG = logging.getLogger("occystrap.bulk")


class ImageProgress:
    """Keys one image's progress apart from the others' (images share layer digests)."""

    def __init__(self, sink: ProgressSink, image: QuayImage) -> None:
        self.sink = sink
        self.prefix = f"{image}|"
        self.label = image.repository[:8]

    def start(self, key: str, total: int | None, label: str) -> None:
        self.sink.start(self.prefix + key, total, f"{self.label} {label}")

    def advance(self, key: str, nbytes: int) -> None:
        self.sink.advance(self.prefix + key, nbytes)

    def restart(self, key: str, completed: int) -> None:
        self.sink.restart(self.prefix + key, completed)

    def finish(self, key: str) -> None:
        self.sink.finish(self.prefix + key)


def describe_failure(exc: Exception) -> str:
    """One line for a failed image: our errors speak for themselves, others name their type."""
    if isinstance(exc, OccystrapError):
        return str(exc)
    return f"{type(exc).__name__}: {exc or 'no detail'}"


@dataclass
class BulkOutcome:
    """Which images went through and which failed, with the reason for each failure."""

    succeeded: list[QuayImage] = field(default_factory=list)
    failed: list[tuple[QuayImage, str]] = field(default_factory=list)


def run_each(
    images: Sequence[QuayImage],
    job: Callable[[QuayImage, ProgressSink], None],
    progress: ProgressSink,
    parallel: int,
) -> BulkOutcome:
    """Run `job` for every image, `parallel` at once; a failure is recorded, not raised."""

    def attempt(image: QuayImage) -> str | None:
        try:
            job(image, ImageProgress(progress, image))
        except Exception as exc:  # noqa: BLE001 - any failure belongs to this image only
            LOG.debug("%s failed", image, exc_info=True)
            return describe_failure(exc)
        return None

    outcome = BulkOutcome()
    with cancellable_pool(parallel, "image") as pool:
        for image, error in zip(images, pool.map(attempt, images), strict=True):
            if error is None:
                outcome.succeeded.append(image)
            else:
                outcome.failed.append((image, error))
    return outcome
