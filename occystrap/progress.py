"""Progress for people: on a terminal, a live display (drawn with rich) of the image being
copied, one bar per layer in flight and the layers the rate limiter holds; anywhere else
(CI logs, a pipe, a file) plain lines, once the run has lasted a few seconds, unless
--progress says otherwise. The summary line is the CLI's (see `cli._summary`)."""

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

from occystrap.units import human_bytes, printable

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
PLAIN_EVERY = 5.0  # seconds between overall progress lines in a log


@dataclass
class _Moving:
    """One layer's task as log lines count it."""

    label: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _PhaseTally:
    """One phase (downloading, writing, uploading) over the run, for the overall line."""

    begun: int = 0
    finished: int = 0
    finished_bytes: int = 0
    moved: int = 0  # every byte advanced, retries included: what the rate counts
    moved_at_last_line: int = 0


class _PlainLines:
    """Progress as log lines, never a control character: a line per layer done (its size,
    time and rate) and, while layers move, one overall line every PLAIN_EVERY seconds (what
    each phase has done of what it has begun, and its rate since the line before), so a CI
    log shows a long run is alive. `quiet_for`: seconds from the start in which nothing is
    printed (auto off a terminal: a run that short needs only its summary line)."""

    def __init__(self, quiet_for: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, _Moving] = {}
        self._phases: dict[str, _PhaseTally] = {}
        self._started = time.monotonic()
        self._quiet_until = self._started + quiet_for
        self._last_line = self._started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        self._thread = threading.Thread(target=self._keep_saying, name="progress", daemon=True)
        self._thread.start()

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def start(self, key: str, total: int | None, label: str) -> None:
        with self._lock:
            if key not in self._tasks:
                self._phase(key).begun += 1
            self._tasks[key] = _Moving(printable(label), total)

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                task.done += nbytes
                self._phase(key).moved += nbytes

    def restart(self, key: str, completed: int) -> None:
        with self._lock:
            if key in self._tasks:
                self._tasks[key].done = completed

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is None:
                return
            phase = self._phase(key)
            phase.finished += 1
            phase.finished_bytes += task.done
        seconds = time.monotonic() - task.started
        word = DONE.get(phase_of(key), "done")
        self._say(
            f"{word} {task.label}: {human_bytes(task.done)} in {seconds:.1f} s,"
            f" {_rate(task.done, seconds)}"
        )

    def overall(self) -> str | None:
        """The overall line now (None while no layer moves); the rates count from the line
        before."""
        now = time.monotonic()
        with self._lock:
            if not self._tasks:
                return None
            seconds, self._last_line = now - self._last_line, now
            moving: dict[str, list[_Moving]] = {}
            for key, task in self._tasks.items():
                moving.setdefault(phase_of(key), []).append(task)
            parts = []
            for name in sorted(moving, key=lambda name: ORDER.get(name, len(ORDER))):
                phase, tasks = self._phases[name], moving[name]
                done = phase.finished_bytes + sum(task.done for task in tasks)
                totals = [task.total for task in tasks]
                of = ""
                if None not in totals:
                    of = f" of {human_bytes(phase.finished_bytes + sum(filter(None, totals)))}"
                parts.append(
                    f"{name} {phase.finished} of {phase.begun}"
                    f" {'layer' if phase.begun == 1 else 'layers'} done,"
                    f" {human_bytes(done)}{of},"
                    f" {_rate(phase.moved - phase.moved_at_last_line, seconds)}"
                )
                phase.moved_at_last_line = phase.moved
        return f"after {now - self._started:.0f} s: " + "; ".join(parts)

    def _phase(self, key: str) -> _PhaseTally:
        return self._phases.setdefault(phase_of(key), _PhaseTally())

    def _keep_saying(self) -> None:
        while not self._stop.wait(PLAIN_EVERY):
            line = self.overall()
            if line is not None:
                self._say(line)

    def _say(self, line: str) -> None:
        if time.monotonic() < self._quiet_until:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"occystrap: {line}\n")
            sys.stderr.flush()


def _rate(nbytes: int, seconds: float) -> str:
    return f"{human_bytes(nbytes / seconds) if seconds > 0 else '?'}/s"


@dataclass
class Tally:
    """When the run started, for the summary line."""

    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class TerminalProgress:
    """A ProgressSink drawing the run on a terminal; on anything else it prints plain lines
    (see _PlainLines) or, with --progress none, nothing.

    Layers progress from worker threads, so every method is thread-safe, and none of them
    lets a drawing failure reach the run: the display stops instead.
    """

    def __init__(self, title: str = "", console: Console | None = None, mode: str = "auto") -> None:
        """`mode` (--progress): "auto" draws on a terminal and prints log lines elsewhere once
        the run has lasted PLAIN_EVERY seconds, "tty" draws even off a terminal, "plain"
        prints log lines from the start (a line per layer finished, an overall line every
        PLAIN_EVERY seconds), "none" shows nothing."""
        self.title = title
        self.tally = Tally()
        self.plain: _PlainLines | None = None
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
        if mode == "plain" or (mode == "auto" and console is None and not self.live):
            self.plain = _PlainLines(quiet_for=PLAIN_EVERY if mode == "auto" else 0.0)

    def _live_display(self) -> Display | None:
        """The display while it is drawn: None off a terminal, or once drawing failed."""
        return self._display if self.live else None

    def __enter__(self) -> TerminalProgress:
        if self.plain is not None:
            self.plain.begin()
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
        if self.plain is not None:
            self.plain.end()
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
