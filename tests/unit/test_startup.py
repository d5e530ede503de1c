"""Start-up loads only what the command needs: `--version` and `--help` never import the HTTP
stack or rich, and a run off a terminal never imports rich (docs/performance.md, "Start-up").

Each case runs the real program in a fresh interpreter, whose module table is the evidence.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.image_builder import make_image, save_tar

REPO_ROOT = Path(__file__).resolve().parents[2]
# Runs the command line as the installed script does, then prints every module it loaded
# (None entries are imports the command line blocks on purpose).
PROBE = """
import json, sys
from occystrap.cli import main
try:
    main()
except SystemExit:
    pass
loaded = [name for name, module in sys.modules.items() if module is not None]
sys.stdout.write("\\n" + json.dumps(sorted(loaded)))
"""
HTTP_STACK = ("httpx", "httpcore", "h2", "ssl", "trio", "anyio")


def loaded_modules(*args: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "TERM": "dumb"},
        timeout=60,
        check=True,
    )
    return set(json.loads(completed.stdout.rpartition("\n")[2]))


def top_level(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("tags", "--help")])
def test_version_and_help_load_neither_the_http_stack_nor_rich(args):
    loaded = top_level(loaded_modules(*args))
    assert "click" in loaded  # the probe really ran the command line
    assert loaded & {*HTTP_STACK, "rich", "pygments"} == set()


def test_version_loads_no_configuration_parser():
    loaded = loaded_modules("--version")
    assert "occystrap.cli" in loaded  # the probe really ran the command line
    parsers = {"occystrap.config_file", "occystrap.registries_conf", "occystrap.tomlfile"}
    assert loaded & {*parsers, "tomllib"} == set()


def test_a_run_off_a_terminal_does_not_import_rich(tmp_path):
    source = tmp_path / "in.tar"
    save_tar(make_image(tmp_path, [{"hello.txt": b"hello\n"}]), source)
    loaded = top_level(
        loaded_modules("process", f"tar://{source}", f"tar://{tmp_path / 'out.tar'}")
    )
    assert (tmp_path / "out.tar").exists()
    assert "occystrap" in loaded
    assert loaded & {"rich", "pygments"} == set()
