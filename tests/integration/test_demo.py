"""The README's offline demo runs end to end: push a generated image, pull it back, unpack it."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


def test_offline_demo_pushes_and_pulls_back():
    result = subprocess.run(
        ["bash", str(DEMO)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "hello from occystrap" in result.stdout
    assert "layers (2):" in result.stdout
