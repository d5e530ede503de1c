"""Run the real `occystrap` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_occystrap(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,  # noqa: A002 - subprocess.run's name for it
) -> subprocess.CompletedProcess:
    """`python -m occystrap ARGS`, fed `input` on stdin if given; with check, fail showing
    stderr unless it exits 0."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "occystrap", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
        input=input,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"occystrap {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def registry_flags(registry) -> list[str]:
    """Global flags occystrap needs for one of the test registries."""
    flags = ["--insecure"] if registry.scheme == "http" else ["--ca-cert", str(registry.ca_cert)]
    if registry.username is not None:
        flags += ["--username", registry.username, "--password", registry.password]
    return flags


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A failure a user can act on: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
