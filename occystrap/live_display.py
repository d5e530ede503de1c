"""The live progress display drawn with rich: loaded only when stderr is a terminal, so runs
in scripts and pipes never import rich (`occystrap.progress.TerminalProgress` decides)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from occystrap.progress import DONE, ORDER, WAITING


def _is_held(task: Task) -> bool:
    return float(task.fields.get("held_until", 0.0)) > time.monotonic()


class _StateColumn(ProgressColumn):
    """The task's phase, or "waiting" while the rate limiter holds its next request."""

    def render(self, task: Task) -> Text:
        if _is_held(task):
            return Text(WAITING, style="yellow")
        return Text(str(task.fields.get("phase", "")), style="cyan")


class Display(Progress):
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

    def take_off(self) -> None:
        """Erase the display (rich erases a transient display when stopped), leaving the
        cursor where it began, so that text written now appears in its place."""
        self.stop()

    def put_back(self) -> None:
        """Draw the display again, below whatever was written since `take_off`: a new Live,
        because a stopped one would first move up over the lines it last drew."""
        self.live = Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=self.console.file is sys.stderr,
            get_renderable=self.get_renderable,
        )
        self.start()

    def get_renderables(self) -> Iterator[RenderableType]:
        tasks = self.tasks
        yield self.header(tasks)
        yield self.make_tasks_table(tasks)

    def refresh(self) -> None:
        """Nothing: rich redraws on add_task and reset, from worker threads; only `draw` does."""

    def draw(self) -> None:
        super().refresh()


def header(
    title: str,
    tasks: list[Task],
    held_hosts: Iterable[tuple[str, float]],
    done: Counter[str],
) -> RenderableType:
    """The image, what its layers are doing, and the requests (host, until) held outside
    any layer."""
    now = time.monotonic()
    phases = Counter(WAITING if _is_held(t) else str(t.fields["phase"]) for t in tasks)
    held = [host for host, until in held_hosts if until > now]
    parts = [
        f"{phase} {count}"
        for phase, count in sorted(phases.items(), key=lambda item: ORDER.get(item[0], 99))
    ]
    parts += [
        f"{count} {DONE.get(phase, phase + ' done')}"
        for phase, count in sorted(done.items(), key=lambda i: ORDER.get(i[0], 99))
    ]
    if held:
        hosts = ", ".join(sorted(set(held)))
        requests = "request" if len(held) == 1 else "requests"
        parts.append(f"{len(held)} {requests} held by the rate limit ({hosts})")
    status = Text("  " + (" · ".join(parts) or "reading manifests"), style="dim")
    return Group(Text(title, style="bold"), status)
