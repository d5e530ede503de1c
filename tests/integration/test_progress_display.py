"""The progress display of a real run: live on a terminal (a pty), plain lines off one."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, registry_flags, run_occystrap
from tests.integration.fault_proxy import BLOB_PATH, BodyFault
from tests.integration.images import build_oci_layout, push_with_skopeo, random_layer

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS, LINES = 320, 40  # wide enough for the long test URIs on one line


def _seed(registry, repo: str, tmp_path: Path) -> str:
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1_500_000, seed) for seed in (21, 22, 23)])
    push_with_skopeo(layout, registry, repo, "v1")
    return f"registry://{registry.host}/{repo}:v1"


def run_on_a_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """`python -m occystrap ARGS` with stderr on a pseudo-terminal; its exit code and what the
    terminal received, escape sequences removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TERM": "xterm-256color",
        "COLUMNS": str(COLUMNS),
        "LINES": str(LINES),
    }
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        environment.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "occystrap", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=environment,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            received += data
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    # Each escape sequence (colour, cursor moves between frames) becomes a line break.
    return returncode, ANSI.sub("\n", received.decode(errors="replace"))


def test_a_terminal_shows_the_image_the_phase_and_each_layer_and_who_waits(
    registry_plain, unique_repo, tmp_path
):
    source = _seed(registry_plain, unique_repo, tmp_path)
    out = tmp_path / "image.tar"
    returncode, shown = run_on_a_terminal(
        *registry_flags(registry_plain), "--rate-limit", "2", "process", source, f"tar://{out}"
    )
    assert returncode == 0, shown
    title = f"{source} -> tar://{out}"
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    assert title in lines, shown  # the header names the image and where it goes
    # what the layers do (held by --rate-limit 2: about 0.5 s per request) and did
    # (a layer is written while it still downloads, so "writing" may lead, and the first
    # layer streams into the tarball, so "downloading" and "writing" may both lead)
    pattern = r"(downloading \d · )?(writing \d · )?waiting \d · \d downloaded.*"
    assert any(re.fullmatch(pattern, line) for line in lines), shown
    assert "3 downloaded · 3 written" in lines, shown  # the last frame, drawn as rich stops
    assert "waiting" in lines, shown  # a layer's own row
    assert any(re.fullmatch(r"\d+%", line) for line in lines), shown  # per layer
    assert any(re.fullmatch(r"[\d.]+/1\.5 MB", line) for line in lines), shown
    last = shown.strip().splitlines()[-1]
    assert last.startswith(f"occystrap: {title}: 3 layers"), shown  # the display cleared itself
    assert out.stat().st_size > 3 * 1_500_000


def test_off_a_terminal_a_slow_run_prints_plain_progress_lines_by_default(
    fault_proxy, registry_plain, unique_repo, tmp_path
):
    """CI logs (stderr a pipe) with default options: a run slowed to about 7 s by the link
    shows life every few seconds (an overall line) and a line per layer done, never an
    escape sequence or carriage return; the summary line stays last."""
    source = _seed(registry_plain, unique_repo, tmp_path)
    # 1.5 MB layers, 64 kB every 0.3 s: each one takes about 7 s
    fault_proxy.spoil_body(BLOB_PATH.pattern, BodyFault("slow", chunk_seconds=0.3), times=10)
    slowed = source.replace(registry_plain.host, fault_proxy.host)
    out = tmp_path / "image.tar"
    result = run_occystrap("--insecure", "process", slowed, f"tar://{out}")
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"occystrap: {slowed} -> tar://{out}: 3 layers"), result.stderr
    overall = [line for line in lines if line.startswith("occystrap: after ")]
    assert overall, result.stderr
    assert all(
        re.fullmatch(
            r"occystrap: after \d+ s: downloading \d of \d layers done, [\d.]+ [kM]?B of .*B,"
            r" [\d.]+ [kM]?B/s(; writing .*)?",
            line,
        )
        for line in overall
    ), result.stderr
    done = [line for line in lines if line.startswith("occystrap: downloaded ")]
    assert len(done) == 3, result.stderr
    assert all(
        re.fullmatch(r"occystrap: downloaded [0-9a-f]{12}: 1\.5 MB in .+ s, .+/s", line)
        for line in done
    ), result.stderr
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", result.stderr), result.stderr
