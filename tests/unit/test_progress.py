"""The terminal progress display: bars per layer from many threads, rate-limit waits, finished
layers gone, plain lines off a terminal, and no drawing failure ever reaching the run."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
from rich.console import Console

from occystrap import progress
from occystrap.progress import REFRESH_SECONDS, TerminalProgress, phase_of

TITLE = "registry://127.0.0.1:5000/app:1 -> tar:///tmp/app.tar"


def terminal(out: io.StringIO | None = None) -> Console:
    return Console(file=out or io.StringIO(), force_terminal=True, width=140)


def shown(sink: TerminalProgress) -> str:
    """The display's current frame as plain text."""
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(sink.frame())
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def row(text: str, label: str) -> str:
    (line,) = [line for line in text.splitlines() if f" {label} " in line]
    return line


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "key, phase",
    [
        ("fetch:sha256:ab", "downloading"),
        ("write:sha256:ab", "writing"),
        ("push:sha256:ab", "uploading"),
        ("quay.io/org/app:1|push:sha256:ab", "uploading"),
    ],
)
def test_the_phase_comes_from_the_key(key, phase):
    assert phase_of(key) == phase


def test_layers_moving_in_several_threads_each_get_a_bar_and_finished_ones_go():
    out = io.StringIO()
    kinds = ["fetch", "fetch", "push", "write"]
    halfway = threading.Barrier(len(kinds) + 1)
    finish = threading.Barrier(len(kinds) + 1)
    errors: list[BaseException] = []

    def layer(sink: TerminalProgress, index: int, kind: str) -> None:
        try:
            key = f"{kind}:sha256:{index:064x}"
            sink.start(key, 4000, f"layer{index}")
            for _ in range(20):  # 2000 of 4000 bytes, in small steps racing the other threads
                sink.advance(key, 100)
            halfway.wait()
            finish.wait()
            if index % 2 == 0:
                sink.advance(key, 2000)
                sink.finish(key)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    with TerminalProgress(TITLE, terminal(out)) as sink:
        threads = [
            threading.Thread(target=layer, args=(sink, i, kind)) for i, kind in enumerate(kinds)
        ]
        for thread in threads:
            thread.start()
        halfway.wait()
        text = shown(sink)
        title, status = text.splitlines()[:2]
        assert title == TITLE
        assert status.split() == ["downloading", "2", "·", "writing", "1", "·", "uploading", "1"]
        for index, kind in enumerate(kinds):
            line = row(text, f"layer{index}")
            assert "50%" in line and "2.0/4.0 kB" in line, line
            assert {"fetch": "downloading", "push": "uploading", "write": "writing"}[kind] in line
        wait_for(lambda: "50%" in out.getvalue() and "━" in out.getvalue())  # really drawn
        finish.wait()
        for thread in threads:
            thread.join()
        text = shown(sink)
        assert "layer0" not in text and "layer2" not in text  # finished: removed
        assert "layer1" in text and "layer3" in text
        assert "1 downloaded · 1 uploaded" in text.splitlines()[1]
    assert not errors


def test_a_layer_held_by_the_rate_limiter_shows_waiting_until_its_turn():
    with TerminalProgress(TITLE, terminal()) as sink:
        moving = threading.Thread(target=sink.start, args=("fetch:sha256:1", 100, "moving"))
        moving.start()
        moving.join()

        def held_layer() -> None:
            sink.start("fetch:sha256:2", 100, "slowlayer")
            sink.rate_limited("127.0.0.1:5000", 0.5)

        def held_request() -> None:  # a HEAD check before any layer started in this thread
            sink.rate_limited("127.0.0.1:5000", 0.5)

        for job in (held_layer, held_request):
            thread = threading.Thread(target=job)
            thread.start()
            thread.join()
        text = shown(sink)
        assert "waiting" in row(text, "slowlayer")
        assert "waiting" not in row(text, "moving")
        assert "downloading" in row(text, "moving")
        status = text.splitlines()[1]
        assert "downloading 1 · waiting 1" in status
        assert "1 request held by the rate limit (127.0.0.1:5000)" in status
        time.sleep(0.6)
        text = shown(sink)
        assert "waiting" not in text
        assert "downloading" in row(text, "slowlayer")


def test_nothing_is_drawn_when_stderr_is_not_a_terminal():
    out = io.StringIO()
    with TerminalProgress(TITLE, Console(file=out, width=140)) as sink:
        sink.start("fetch:sha256:1", 100, "one")
        sink.advance("fetch:sha256:1", 50)
        sink.rate_limited("127.0.0.1:5000", 0.2)
        time.sleep(3 * REFRESH_SECONDS)
        sink.finish("fetch:sha256:1")
    assert out.getvalue() == ""


def test_the_display_clears_itself_for_the_summary_line():
    out = io.StringIO()
    with TerminalProgress(TITLE, terminal(out)) as sink:
        sink.start("fetch:sha256:1", 100, "one")
        wait_for(lambda: "one" in out.getvalue())
    assert out.getvalue().endswith("\x1b[2K")  # the last frame erased: nothing left over


class BrokenTerminal(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")

    def isatty(self) -> bool:
        return True


def test_a_failing_terminal_stops_the_display_not_the_run():
    sink = TerminalProgress(TITLE, Console(file=BrokenTerminal(), force_terminal=True))
    with sink:
        sink.start("push:sha256:1", 100, "one")
        sink.advance("push:sha256:1", 60)
        sink.rate_limited("127.0.0.1:5000", 0.1)
        time.sleep(3 * REFRESH_SECONDS)
        sink.restart("push:sha256:1", 0)
        sink.advance("push:sha256:1", 100)
        sink.finish("push:sha256:1")
    assert not sink.live


def test_unknown_keys_and_repeated_starts_are_harmless():
    with TerminalProgress(TITLE, terminal()) as sink:
        sink.advance("fetch:sha256:never-started", 10)
        sink.restart("fetch:sha256:never-started", 0)
        sink.finish("fetch:sha256:never-started")
        sink.start("push:sha256:1", 100, "again")
        sink.advance("push:sha256:1", 70)
        sink.start("push:sha256:1", 100, "again")  # fetched once more after a bad digest
        text = shown(sink)
        assert text.count("again") == 1
        assert "0%" in row(text, "again") and "70%" not in text
        assert sink.live


def plain_run(capsys, monkeypatch, mode: str) -> list[str]:
    """Two layers through a sink with stderr not a terminal: one finishes at once, one moves
    for three overall-line intervals; the stderr lines printed."""
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.2)
    with TerminalProgress(TITLE, mode=mode) as sink:
        sink.start("fetch:sha256:1", 1000, "quick")
        sink.advance("fetch:sha256:1", 1000)
        sink.finish("fetch:sha256:1")
        sink.start("fetch:sha256:2", 4_000_000, "slow\x1b[2J")
        for _ in range(6):
            sink.advance("fetch:sha256:2", 100_000)
            time.sleep(0.1)
        sink.finish("fetch:sha256:2")
    return capsys.readouterr().err.splitlines()


def test_plain_lines_say_each_layer_done_and_how_the_run_goes(capsys, monkeypatch):
    lines = plain_run(capsys, monkeypatch, "plain")
    assert re.fullmatch(r"occystrap: downloaded quick: 1.0 kB in \d\.\d s, .+/s", lines[0])
    overall = [line for line in lines if line.startswith("occystrap: after ")]
    assert 2 <= len(overall) <= 3, lines  # at most one a PLAIN_EVERY
    assert re.fullmatch(
        r"occystrap: after \d s: downloading 1 of 2 layers done, .+ of 4\.0 MB, .+/s",
        overall[0],
    ), overall
    assert lines[-1].startswith(r"occystrap: downloaded slow\x1b[2J: 600.0 kB in "), lines
    assert not any(re.search(r"[\x00-\x1f\x7f-\x9f]", line) for line in lines), lines


def test_auto_off_a_terminal_stays_quiet_for_a_short_run_then_prints_plain_lines(
    capsys, monkeypatch
):
    lines = plain_run(capsys, monkeypatch, "auto")
    assert not any("quick" in line for line in lines), lines  # done within the first interval
    assert any(line.startswith("occystrap: after ") for line in lines), lines
    assert lines[-1].startswith(r"occystrap: downloaded slow\x1b[2J: 600.0 kB in "), lines


def test_none_prints_nothing(capsys, monkeypatch):
    assert plain_run(capsys, monkeypatch, "none") == []
