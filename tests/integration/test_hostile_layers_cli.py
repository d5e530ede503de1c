"""Hostile layers pulled from the real registry and expanded through the CLI (dir://...?expand).

A whiteout of `.`/`..` or an expansion bomb is one line and leaves nothing behind; devices and
setuid bits appear only when the URI asks for them.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.pull_checks import TAG, seed_image
from tests.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.integration

LOWER = {"etc/hosts": b"localhost\n", "a/b": b"b"}


def _expand(registry, repo: str, out: Path, options: str = "", *flags: str):
    return run_occystrap(
        "--insecure",
        *flags,
        "process",
        f"registry://{registry.host}/{repo}:{TAG}",
        f"dir://{out}?expand=true{options}",
        check=False,
    )


@pytest.mark.parametrize("whiteout", [".wh..", ".wh...", "a/.wh.."])
def test_whiteout_of_dot_or_dotdot_is_refused_and_nothing_is_left(
    registry_plain, unique_repo, tmp_path, whiteout
):
    seed_image(registry_plain, unique_repo, tmp_path, [LOWER, {whiteout: b""}])
    (tmp_path / "neighbour").write_text("keep me")
    out = tmp_path / "out"
    result = _expand(registry_plain, unique_repo, out)
    assert_one_line_error(result, "whiteout", "refusing")
    assert not out.exists()  # no skeleton holding only the marker
    assert (tmp_path / "neighbour").read_text() == "keep me"


def test_an_expansion_over_budget_is_refused_and_nothing_is_left(
    registry_plain, unique_repo, tmp_path
):
    # 16 MiB of zeros compress to a few kB: a (small) decompression bomb.
    seed_image(registry_plain, unique_repo, tmp_path, [LOWER, {"zeros": bytes(16 * 1024**2)}])
    out = tmp_path / "out"
    result = _expand(registry_plain, unique_repo, out, "&max_expand=4M")
    assert_one_line_error(result, "expansion budget", "4 MiB")
    assert not out.exists()  # no skeleton holding only the marker
    assert _expand(registry_plain, unique_repo, out).returncode == 0  # the default is generous
    assert (out / "rootfs" / "zeros").stat().st_size == 16 * 1024**2


def test_a_decompression_bomb_is_stopped_while_inflating_not_when_the_disk_is_full(
    registry_plain, unique_repo, tmp_path
):
    """The budget also caps the layer tars inflated into --temp-dir, before any expansion."""
    seed_image(registry_plain, unique_repo, tmp_path, [{"zeros": bytes(64 * 1024**2)}])
    out = tmp_path / "out"
    with mounted_tmpfs(tmp_path / "temp", size="16m") as temp:
        result = _expand(
            registry_plain, unique_repo, out, "&max_expand=4M", "--temp-dir", str(temp)
        )
        assert_one_line_error(result, "expansion budget")
        assert os.listdir(temp) == []
    assert not out.exists()  # no skeleton holding only the marker


def _special(kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo()
    info.type, info.mode = kind, mode
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
def test_devices_and_setuid_only_when_the_uri_asks(registry_plain, unique_repo, tmp_path):
    layer = {
        "dev/null": _special(tarfile.CHRTYPE, 0o666),
        "bin/su": _special(tarfile.REGTYPE, 0o4755),
        "bin/wall": _special(tarfile.REGTYPE, 0o2755),
    }
    seed_image(registry_plain, unique_repo, tmp_path, [LOWER, layer])
    safe = tmp_path / "safe"
    result = _expand(registry_plain, unique_repo, safe)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(safe / "rootfs" / "dev" / "null")
    assert stat.S_IMODE((safe / "rootfs" / "bin" / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((safe / "rootfs" / "bin" / "wall").stat().st_mode) == 0o755
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, result.stderr  # one per kind, for the one layer that had them
    assert "device" in warnings[0] and "setuid" in warnings[1]

    trusted = tmp_path / "trusted"
    result = _expand(registry_plain, unique_repo, trusted, "&devices=true&setuid=true")
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR((trusted / "rootfs" / "dev" / "null").lstat().st_mode)
    assert stat.S_IMODE((trusted / "rootfs" / "bin" / "su").stat().st_mode) == 0o4755
    assert "WARNING" not in result.stderr


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("?devices=true", "only apply with expand=true"),
        ("?expand=true&max_expand=lots", "is not a size"),
        ("?expand=true&max_expand=0", "is not a size"),
        ("?expand=true&setuid=maybe", "not a boolean"),
    ],
)
def test_expansion_options_are_checked(tmp_path, query, fragment):
    result = run_occystrap(
        "process", "registry://127.0.0.1:9/x:y", f"dir://{tmp_path}/out{query}", check=False
    )
    assert_one_line_error(result, fragment)
    assert os.listdir(tmp_path) == []


def _owned_by(uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo()
    info.type, info.mode, info.uid, info.gid = tarfile.REGTYPE, 0o644, uid, gid
    return info


@pytest.mark.parametrize(
    "destination",
    [
        "dir://{out}?expand=true",
        "oci://{out}",
        pytest.param(
            "mounts://{out}",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="mounts:// needs root"),
        ),
    ],
)
@pytest.mark.parametrize("owner", [(2**32, 0), (0, 2**40)], ids=["uid-2^32", "gid-2^40"])
def test_an_owner_beyond_32_bits_is_refused_in_one_line(
    registry_plain, unique_repo, tmp_path, destination, owner
):
    seed_image(registry_plain, unique_repo, tmp_path, [LOWER, {"big": _owned_by(*owner)}])
    out = tmp_path / "out"
    result = run_occystrap(
        "--insecure",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        destination.format(out=out),
        check=False,
    )
    assert_one_line_error(result, "'big'", "no Linux system can hold", "refusing")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts:// needs root")
def test_mounts_keeps_a_hard_link_to_a_file_of_a_lower_layer(registry_plain, unique_repo, tmp_path):
    """Each overlay layer is its own directory: the link becomes a copy, so the merged view
    has the file as dir:// and oci:// outputs do (it used to be dropped, exit 0)."""
    link = tarfile.TarInfo()
    link.type, link.linkname, link.mode = tarfile.LNKTYPE, "bin/tool", 0o755
    seed_image(
        registry_plain, unique_repo, tmp_path, [{"bin/tool": b"#!/bin/sh\n"}, {"bin/alias": link}]
    )
    out = tmp_path / "out"
    result = run_occystrap(
        "--insecure",
        "process",
        f"registry://{registry_plain.host}/{unique_repo}:{TAG}",
        f"mounts://{out}",
    )
    assert "missing" not in result.stderr, result.stderr
    lower, upper = sorted((out / "layers").iterdir())
    copied, original = upper / "bin" / "alias", lower / "bin" / "tool"
    assert copied.read_bytes() == original.read_bytes() == b"#!/bin/sh\n"
    assert copied.stat().st_mode == original.stat().st_mode  # a link shares its target's
