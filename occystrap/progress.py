"""Progress for people: on a terminal, a live display (drawn with rich) of the image being
copied, one bar per layer in flight and the layers the rate limiter holds; nothing at all
when stderr is not a terminal. The summary line is the CLI's (see `cli._summary`)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Task, TaskID

    from occystrap.live_display import Display

LOG = logging.getLogger("occystrap.progress")

# What a task does, by its key's prefix ("fetch:sha256:...", maybe behind a bulk "IMAGE|"),
# and what it did once finished; in the order the header lists them.
PHASES = {
    "fetch": ("downloading", "downloaded"),
    "write": ("writing", "written"),
    "push": ("uploading", "uploaded"),
}
WAITING = "waiting"
ORDER = {word: n for n, word in enumerate([*(doing for doing, _ in PHASES.values()), WAITING])}
DONE = dict(PHASES.values())
REFRESH_SECONDS = 0.1


def phase_of(key: str) -> str:
    """The phase a progress key names: "fetch:..." is downloading, "IMAGE|push:..." uploading."""
    kind = key.rpartition("|")[2].partition(":")[0]
    return PHASES.get(kind, (kind, ""))[0]


@dataclass
class Tally:
    """When the run started, for the summary line."""

    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class TerminalProgress:
    """A ProgressSink drawing the run on a terminal; on anything else it draws nothing.

    Layers progress from worker threads, so every method is thread-safe, and none of them
    lets a drawing failure reach the run: the display stops instead.
    """

    def __init__(self, title: str = "", console: Console | None = None) -> None:
        self.title = title
        self.tally = Tally()
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._working_on = threading.local()  # .key: the task the thread works on
        self._held: dict[int, tuple[str, float]] = {}  # thread (no task) -> (host, until)
        self._done: Counter[str] = Counter()  # phase -> tasks finished
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._log_streams: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
        self.console = console
        self._display: Display | None = None
        if console is not None or _stderr_may_be_a_terminal():
            from rich.console import Console

            from occystrap.live_display import Display

            self.console = console or Console(stderr=True)
            self._display = Display(self._header, self.console)
        self.live = (
            self.console is not None
            and self.console.is_terminal
            and not self.console.is_dumb_terminal
        )

    def _live_display(self) -> Display | None:
        """The display while it is drawn: None off a terminal, or once drawing failed."""
        return self._display if self.live else None

    def __enter__(self) -> TerminalProgress:
        display = self._live_display()
        if display is not None:
            with self._guard():
                original = sys.stderr
                display.start()
                self._started = True
                self._send_logging_to(original, sys.stderr)
                self._thread = threading.Thread(
                    target=self._keep_drawing, name="progress", daemon=True
                )
                self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for handler, stream in self._log_streams:
            handler.setStream(stream)
        self._log_streams.clear()
        if self._started and self._display is not None:
            # (unstarted, rich would still print an empty line off a terminal)
            with self._guard():
                self._display.stop()

    # -- the ProgressSink protocol ---------------------------------------------------------

    def start(self, key: str, total: int | None, label: str) -> None:
        display = self._live_display()
        if display is None:
            return
        with self._guard(), self._lock:
            task = self._tasks.get(key)
            if task is None:
                self._tasks[key] = display.add_task(
                    label, total=total, phase=phase_of(key), held_until=0.0
                )
            else:  # the same blob again (fetched once more after a bad digest)
                display.reset(task, total=total, description=label)
            self._working_on.key = key

    def advance(self, key: str, nbytes: int) -> None:
        display = self._live_display()
        if display is None:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                display.advance(task, nbytes)

    def restart(self, key: str, completed: int) -> None:
        display = self._live_display()
        if display is None:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                display.reset(task, completed=completed)

    def finish(self, key: str) -> None:
        display = self._live_display()
        if display is None:
            return
        with self._guard(), self._lock:
            task = self._tasks.pop(key, None)
            if task is None:
                return
            display.remove_task(task)
            self._done[phase_of(key)] += 1
            if getattr(self._working_on, "key", None) == key:
                del self._working_on.key

    # -- the rate limiter ------------------------------------------------------------------

    def rate_limited(self, host: str, seconds: float) -> None:
        """The rate limiter holds the calling thread's next request to `host` for `seconds`:
        its layer shows "waiting" until then (a request outside any layer is counted)."""
        display = self._live_display()
        if display is None:
            return
        until = time.monotonic() + seconds
        with self._guard(), self._lock:
            task = self._tasks.get(getattr(self._working_on, "key", ""))
            if task is not None:
                display.update(task, held_until=until)
            else:
                self._held[threading.get_ident()] = (host, until)

    # -- drawing ---------------------------------------------------------------------------

    def _header(self, tasks: list[Task]) -> RenderableType:
        """The image, what its layers are doing, and the requests held outside any layer.
        It reads copies, without our lock, so drawing never waits for the workers."""
        from occystrap.live_display import header

        return header(self.title, tasks, self._held.copy().values(), self._done.copy())

    def write_above(self, text: str, stream: TextIO) -> None:
        """Write `text` to `stream` (stdout) without the live display overwriting it: the
        display is taken off first and drawn again below it at the next refresh."""
        if self._display is None or self.console is None:
            stream.write(text)
            stream.flush()
            return
        live = self._display.live
        with live._lock:  # no refresh or log line between taking the display off and writing
            if self.live and self._started:
                with self._guard():
                    # rich keeps what it drew last to move over it on the next refresh;
                    # forgetting it makes that refresh draw below `text` instead of over it.
                    self.console.control(live._live_render.position_cursor())
                    live._live_render._shape = None
            stream.write(text)
            stream.flush()

    def frame(self) -> RenderableType:
        """What the display shows now: the header, then one bar per layer in flight."""
        if self._display is None:
            raise RuntimeError("no display: stderr is not a terminal")
        return self._display.get_renderable()

    def _keep_drawing(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            display = self._live_display()
            if display is None:
                return
            with self._guard():
                display.draw()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Swallow any failure of the display (it then stops drawing); the run goes on."""
        try:
            yield
        except Exception:  # noqa: BLE001 - a progress display must never fail a copy
            self.live = False
            LOG.debug("progress display stopped", exc_info=True)

    def _send_logging_to(self, original: TextIO, replacement: TextIO) -> None:
        """Route log handlers writing to the terminal through rich, so lines appear above the
        display instead of through it."""
        if replacement is original:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                self._log_streams.append((handler, original))
                handler.setStream(replacement)


def _stderr_may_be_a_terminal() -> bool:
    """Whether rich could find a terminal on stderr: a tty, or the variables that force one
    (FORCE_COLOR, TTY_COMPATIBLE). Otherwise nothing is drawn and rich is never imported."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"):
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
