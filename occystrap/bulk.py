"""Running one job per image, several at once, so one failed image does not stop the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from occystrap.cancel import Cancellation, cancellable_pool
from occystrap.endpoints import Endpoint
from occystrap.errors import OccystrapError, is_network_error
from occystrap.pipeline import ProgressSink

LOG = logging.getLogger("occystrap.bulk")
T = TypeVar("T")


class ImageProgress:
    """Keys one image's progress apart from the others' (images share layer digests)."""

    def __init__(self, sink: ProgressSink, image: Endpoint) -> None:
        self.sink = sink
        self.prefix = f"{image.describe()}|"
        reference = image.image_reference
        name = reference.repository.rpartition("/")[2] if reference is not None else str(image)
        self.label = name[:8]

    def start(self, key: str, total: int | None, label: str) -> None:
        self.sink.start(self.prefix + key, total, f"{self.label} {label}")

    def advance(self, key: str, nbytes: int) -> None:
        self.sink.advance(self.prefix + key, nbytes)

    def restart(self, key: str, completed: int) -> None:
        self.sink.restart(self.prefix + key, completed)

    def finish(self, key: str) -> None:
        self.sink.finish(self.prefix + key)


def describe_failure(exc: Exception) -> str:
    """One line for a failed image: our errors speak for themselves, network failures say
    where and what to check, others name their type."""
    if isinstance(exc, OccystrapError):
        return str(exc)
    if is_network_error(exc):
        from occystrap.registry.errors import network_error_message

        return network_error_message(exc)
    return f"{type(exc).__name__}: {exc or 'no detail'}"


def run_each(
    items: Sequence[T], job: Callable[[T], None], parallel: int, cancellation: Cancellation
) -> list[str | None]:
    """Run `job` for every item, `parallel` at once; returns each item's failure (one line),
    or None where it succeeded: a failure is recorded, not raised."""

    def attempt(item: T) -> str | None:
        try:
            job(item)
        except Exception as exc:  # noqa: BLE001 - any failure belongs to this item only
            LOG.debug("%s failed", item, exc_info=True)
            return describe_failure(exc)
        return None

    with cancellable_pool(cancellation, parallel, "image") as pool:
        return list(pool.map(attempt, items))
