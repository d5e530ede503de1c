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
    return install_distributions(tmp_path, [PLUGIN_DIST])


def install_distributions(tmp_path: Path, distributions: list[Path]) -> Path:
    """Install plug-in distributions (without their dependencies, which the test environment
    has) into one private directory, returned to be put on PYTHONPATH."""
    sources = []
    for distribution in distributions:
        source = tmp_path / f"{distribution.name}-src"
        shutil.copytree(distribution, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        sources.append(str(source))
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
            *sources,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    return target
