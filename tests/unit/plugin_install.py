"""Install the test plug-in distribution (tests/plugin_dist) into a private directory, as pip
would for a user, so its entry points are discovered for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIST = REPO_ROOT / "tests" / "plugin_dist"


def install_test_plugin(tmp_path: Path) -> Path:
    """The directory the plug-in was installed into (put it on PYTHONPATH)."""
    source = tmp_path / "plugin-src"
    shutil.copytree(PLUGIN_DIST, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "plugin-site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    return target
