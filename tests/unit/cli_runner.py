"""Run the real CLI in this process: its exit status and what it wrote to stderr."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from occystrap.cli import main


@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str = ""

    def assert_one_line_error(self, *fragments: str) -> None:
        lines = self.stderr.strip().splitlines()
        assert self.status != 0, self.stderr
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("occystrap: error: "), lines[0]
        assert "Traceback" not in self.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]


def run_cli(*args: str) -> Outcome:
    err, out = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main.main(args=list(args), prog_name="occystrap")
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    return Outcome(status, err.getvalue(), out.getvalue())
