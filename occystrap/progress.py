"""Progress for people: on a terminal, a live display (drawn with rich) of the image being
copied, one bar per layer in flight and the layers the rate limiter holds; nothing when
stderr is not a terminal, unless --progress asks for plain lines (or the display anyway).
The summary line is the CLI's (see `cli._summary`)."""

from __future__ import annotations

import contextlib
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

from occystrap.units import human_bytes

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


PROGRESS_MODES = ("auto", "tty", "plain", "none")
PLAIN_EVERY = 10.0  # seconds between plain lines for one layer still moving


class _PlainLines:
    """--progress plain: one stderr line per layer done, and one every PLAIN_EVERY seconds
    for a layer still moving, so CI logs show a long run is alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, list] = {}  # key -> [label, total, done, started, last said]

    def start(self, key: str, total: int | None, label: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._tasks[key] = [label, total, 0, now, now]

    def advance(self, key: str, nbytes: int) -> None:
        now = time.monotonic()
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                return
            task[2] += nbytes
            if now - task[4] < PLAIN_EVERY:
                return
            task[4] = now
            label, total, done = task[0], task[1], task[2]
        share = f" of {human_bytes(total)}" if total else ""
        self._say(f"{phase_of(key)} {label}: {human_bytes(done)}{share}")

    def restart(self, key: str, completed: int) -> None:
        with self._lock:
            if key in self._tasks:
                self._tasks[key][2] = completed

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            seconds = time.monotonic() - task[3]
            word = DONE.get(phase_of(key), "done")
            self._say(f"{word} {task[0]}: {human_bytes(task[2])} in {seconds:.1f} s")

    @staticmethod
    def _say(line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"occystrap: {line}\n")
            sys.stderr.flush()


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

    def __init__(self, title: str = "", console: Console | None = None, mode: str = "auto") -> None:
        """`mode` (--progress): "auto" draws on a terminal only, "tty" draws even off one,
        "plain" prints a line per layer finished (and every PLAIN_EVERY seconds while one
        moves) for logs, "none" shows nothing."""
        self.title = title
        self.tally = Tally()
        self.plain = _PlainLines() if mode == "plain" else None
        self._lock = threading.Lock()
        self._writing = threading.Lock()
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
        drawn = mode == "tty" or (mode == "auto" and _stderr_may_be_a_terminal())
        if console is not None or drawn:
            from rich.console import Console

            from occystrap.live_display import Display

            self.console = console or Console(stderr=True, force_terminal=mode == "tty" or None)
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
        if self.plain is not None:
            self.plain.start(key, total, label)
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
        if self.plain is not None:
            self.plain.advance(key, nbytes)
        display = self._live_display()
        if display is None:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                display.advance(task, nbytes)

    def restart(self, key: str, completed: int) -> None:
        if self.plain is not None:
            self.plain.restart(key, completed)
        display = self._live_display()
        if display is None:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                display.reset(task, completed=completed)

    def finish(self, key: str) -> None:
        if self.plain is not None:
            self.plain.finish(key)
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
        display is taken off, `text` written where it was, and the display drawn below."""
        with self._writing:  # one writer at a time between taking the display off and back
            display = self._live_display() if self._started else None
            if display is not None:
                with self._guard():
                    display.take_off()
            stream.write(text)
            stream.flush()
            if display is not None and self.live:
                with self._guard():
                    display.put_back()

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
