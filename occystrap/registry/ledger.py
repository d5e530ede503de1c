"""Where this run has put each blob on each registry, so a blob shared by many images goes
up once per destination registry and is mounted into every other repository.

Pushes of one digest to one registry take turns: the first uploads, the next finds where it
went (here, or in the blob cache) and asks the registry to mount it instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class UploadLedger:
    """Turns per (registry, digest) and the repositories known to hold each blob."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[tuple[str, str], threading.Lock] = {}
        self._held: dict[tuple[str, str], list[str]] = {}

    @contextmanager
    def turn(self, registry: str, digest: str) -> Iterator[None]:
        """Hold the one push of `digest` to `registry` that may run now."""
        with self._lock:
            turn = self._turns.setdefault((registry, digest), threading.Lock())
        with turn:
            yield

    def record(self, registry: str, digest: str, repository: str) -> None:
        with self._lock:
            held = self._held.setdefault((registry, digest), [])
            if repository not in held:
                held.append(repository)

    def repositories(self, registry: str, digest: str) -> list[str]:
        with self._lock:
            return list(self._held.get((registry, digest), ()))
