"""Progress for people: on a terminal, a live display (drawn with rich) of the image being
copied, one bar per layer in flight and the layers the rate limiter holds; nothing at all
when stderr is not a terminal. The summary line is the CLI's (see `commands._summary`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

LOG = logging.getLogger("occystrap.progress")

# What a task does, by its key's prefix ("fetch:sha256:...", maybe behind a bulk "IMAGE|"),
# and what it did once finished; in the order the header lists them.
PHASES = {
    "fetch": ("downloading", "downloaded"),
    "write": ("writing", "written"),
    "push": ("uploading", "uploaded"),
}
WAITING = "waiting"
_ORDER = {word: n for n, word in enumerate([*(doing for doing, _ in PHASES.values()), WAITING])}
_DONE = dict(PHASES.values())
REFRESH_SECONDS = 0.1


def human_bytes(n: float) -> str:
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


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


def _is_held(task: Task) -> bool:
    return float(task.fields.get("held_until", 0.0)) > time.monotonic()


class _StateColumn(ProgressColumn):
    """The task's phase, or "waiting" while the rate limiter holds its next request."""

    def render(self, task: Task) -> Text:
        if _is_held(task):
            return Text(WAITING, style="yellow")
        return Text(str(task.fields.get("phase", "")), style="cyan")


class _Display(Progress):
    """rich's Progress with a header (image and phases) above the bars."""

    def __init__(self, header: Callable[[list[Task]], RenderableType], console: Console) -> None:
        self.header = header
        super().__init__(
            TextColumn("  "),
            _StateColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,  # TerminalProgress draws, so a failed draw cannot escape
            transient=True,  # the summary line replaces the display
            redirect_stdout=False,  # stdout may be a pipe while stderr is the terminal
            redirect_stderr=console.file is sys.stderr,  # log lines go above the display
        )

    def get_renderables(self) -> Iterator[RenderableType]:
        tasks = self.tasks
        yield self.header(tasks)
        yield self.make_tasks_table(tasks)

    def refresh(self) -> None:
        """Nothing: rich redraws on add_task and reset, from worker threads; only `draw` does."""

    def draw(self) -> None:
        super().refresh()


class TerminalProgress:
    """A ProgressSink drawing the run on a terminal; on anything else it draws nothing.

    Layers progress from worker threads, so every method is thread-safe, and none of them
    lets a drawing failure reach the run: the display stops instead.
    """

    def __init__(self, title: str = "", console: Console | None = None) -> None:
        self.title = title
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
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
        self._display = _Display(self._header, self.console)

    def __enter__(self) -> TerminalProgress:
        if self.live:
            with self._guard():
                original = sys.stderr
                self._display.start()
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
        if self._started:  # (unstarted, rich would still print an empty line off a terminal)
            with self._guard():
                self._display.stop()

    # -- the ProgressSink protocol ---------------------------------------------------------

    def start(self, key: str, total: int | None, label: str) -> None:
        if not self.live:
            return
        with self._guard(), self._lock:
            task = self._tasks.get(key)
            if task is None:
                self._tasks[key] = self._display.add_task(
                    label, total=total, phase=phase_of(key), held_until=0.0
                )
            else:  # the same blob again (fetched once more after a bad digest)
                self._display.reset(task, total=total, description=label)
            self._working_on.key = key

    def advance(self, key: str, nbytes: int) -> None:
        if not self.live:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                self._display.advance(task, nbytes)

    def restart(self, key: str, completed: int) -> None:
        if not self.live:
            return
        with self._guard():
            task = self._tasks.get(key)
            if task is not None:
                self._display.reset(task, completed=completed)

    def finish(self, key: str) -> None:
        if not self.live:
            return
        with self._guard(), self._lock:
            task = self._tasks.pop(key, None)
            if task is None:
                return
            self._display.remove_task(task)
            self._done[phase_of(key)] += 1
            if getattr(self._working_on, "key", None) == key:
                del self._working_on.key

    # -- the rate limiter ------------------------------------------------------------------

    def rate_limited(self, host: str, seconds: float) -> None:
        """The rate limiter holds the calling thread's next request to `host` for `seconds`:
        its layer shows "waiting" until then (a request outside any layer is counted)."""
        if not self.live:
            return
        until = time.monotonic() + seconds
        with self._guard(), self._lock:
            task = self._tasks.get(getattr(self._working_on, "key", ""))
            if task is not None:
                self._display.update(task, held_until=until)
            else:
                self._held[threading.get_ident()] = (host, until)

    # -- drawing ---------------------------------------------------------------------------

    def _header(self, tasks: list[Task]) -> RenderableType:
        """The image, what its layers are doing, and the requests held outside any layer.
        It reads copies, without our lock, so drawing never waits for the workers."""
        now = time.monotonic()
        phases = Counter(WAITING if _is_held(t) else str(t.fields["phase"]) for t in tasks)
        held = [host for host, until in self._held.copy().values() if until > now]
        parts = [
            f"{phase} {count}"
            for phase, count in sorted(phases.items(), key=lambda item: _ORDER.get(item[0], 99))
        ]
        parts += [
            f"{count} {_DONE.get(phase, phase + ' done')}"
            for phase, count in sorted(
                self._done.copy().items(), key=lambda i: _ORDER.get(i[0], 99)
            )
        ]
        if held:
            hosts = ", ".join(sorted(set(held)))
            requests = "request" if len(held) == 1 else "requests"
            parts.append(f"{len(held)} {requests} held by the rate limit ({hosts})")
        status = Text("  " + (" · ".join(parts) or "reading manifests"), style="dim")
        return Group(Text(self.title, style="bold"), status)

    def write_above(self, text: str, stream: TextIO) -> None:
        """Write `text` to `stream` (stdout) without the live display overwriting it: the
        display is taken off first and drawn again below it at the next refresh."""
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
        return self._display.get_renderable()

    def _keep_drawing(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS) and self.live:
            with self._guard():
                self._display.draw()

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
