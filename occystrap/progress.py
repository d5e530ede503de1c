"""Progress for people: a live per-layer and total display on a terminal, a summary line always."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO


def human_bytes(n: float) -> str:
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


@dataclass
class _Task:
    label: str
    total: int | None
    done: int = 0
    finished: bool = False


@dataclass
class Tally:
    """What a run moved: for the summary line and for tests."""

    bytes: int = 0
    tasks: int = 0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class TerminalProgress:
    """A ProgressSink that redraws a small table on stderr while work runs (only on a tty)."""

    REFRESH = 0.2

    def __init__(self, stream: TextIO = sys.stderr, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.tally = Tally()
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._drawn_lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TerminalProgress:
        if self.live:
            self._thread = threading.Thread(target=self._redraw_loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw(final=True)

    def start(self, key: str, total: int | None, label: str) -> None:
        with self._lock:
            self._tasks[key] = _Task(label, total)

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            self._tasks[key].done += nbytes
            self.tally.bytes += nbytes

    def restart(self, key: str, completed: int) -> None:
        with self._lock:
            task = self._tasks[key]
            self.tally.bytes -= task.done - completed
            task.done = completed

    def finish(self, key: str) -> None:
        with self._lock:
            self._tasks[key].finished = True
            self.tally.tasks += 1

    def _redraw_loop(self) -> None:
        while not self._stop.wait(self.REFRESH):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        with self._lock:
            active = [t for t in self._tasks.values() if not t.finished]
            total = sum(t.total or 0 for t in self._tasks.values())
            lines = [self._line(t) for t in active[:8]]
            lines.append(self._total_line(total))
            out = self._erase()
            out += "".join(line + "\n" for line in ([] if final else lines))
            self._drawn_lines = 0 if final else len(lines)
            self.stream.write(out)
            self.stream.flush()

    def _erase(self) -> str:
        """What takes the display drawn last off the screen (call with the lock held)."""
        return "\x1b[1A\x1b[2K" * self._drawn_lines

    def write_above(self, text: str, stream: TextIO) -> None:
        """Write `text` to `stream` (stdout) without the live display overwriting it: the
        display is taken off first and redrawn below at the next refresh."""
        with self._lock:
            if self._drawn_lines:
                self.stream.write(self._erase())
                self.stream.flush()
                self._drawn_lines = 0
            stream.write(text)
            stream.flush()

    def _line(self, task: _Task) -> str:
        size = human_bytes(task.total) if task.total else "?"
        return f"  {task.label:<14} {human_bytes(task.done):>9} / {size:<9}"

    def _total_line(self, total: int) -> str:
        elapsed = max(self.tally.elapsed(), 1e-6)
        rate = self.tally.bytes / elapsed
        eta = f"ETA {(total - self.tally.bytes) / rate:.0f}s" if rate and total else ""
        return (
            f"  total {human_bytes(self.tally.bytes)} / {human_bytes(total)}"
            f"  {human_bytes(rate)}/s  {eta}"
        )
