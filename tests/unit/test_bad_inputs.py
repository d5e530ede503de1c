"""Bad input of every kind through the real CLI: one line on stderr, a non-zero exit, no
traceback, and nothing left behind. Plus generated hostile docker-save archives."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cli_runner import run_cli
from .image_builder import layer_tar, sha256

DEAD = "127.0.0.1:9"  # discard port: nothing listens there


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _valid_members() -> dict[str, bytes]:
    layer = layer_tar({"etc/hosts": b"localhost\n"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    manifest = [{"Config": "c.json", "RepoTags": ["a:b"], "Layers": ["l/layer.tar"]}]
    return {"manifest.json": json.dumps(manifest).encode(), "c.json": config, "l/layer.tar": layer}


BATTERY = [
    # (arguments, fragment of the one line)
    (["process", "nonsense", "tar://x.tar"], "is not a URI"),
    (["process", "ftp://h/x", "tar://x.tar"], "unknown URI scheme 'ftp'"),
    (["process", "registry://busybox", "tar://x.tar"], "expected HOST"),
    (["process", f"registry://{DEAD}/a?colour=red", "tar://x.tar"], "unknown option 'colour'"),
    (["process", f"registry://{DEAD}/a?insecure=maybe", "tar://x.tar"], "not a boolean"),
    (["process", f"registry://{DEAD}/a?os=", "tar://x.tar"], "has no value"),
    (["process", "registry://h.example:70000/a", "tar://x.tar"], "port"),
    (["process", "registry://u:hunter2@h.example/a", "tar://x.tar"], "credentials in the URI"),
    (["process", "quay://org?token=s3cret&since=2024-13-01", "tar://x.tar"], "invalid date"),
    (["process", "quay://org", "tar://one.tar"], "holds a single image"),
    (["process", "tar://", "tar://x.tar"], "no path"),
    (["process", "dir://d?expand=sure", "tar://x.tar"], "not a boolean"),
    (["process", "dir://d?flatten=1", "tar://x.tar"], "unknown option 'flatten'"),
    (["process", "tar://MISSING.tar", "tar://x.tar"], "MISSING.tar"),
    (["process", "tar://JUNK.tar", "tar://x.tar"], "JUNK.tar"),
    (["process", "tar://GOOD.tar", "tar://DIRECTORY"], "DIRECTORY"),
    (["process", "tar://GOOD.tar", "tar://NOPARENT/x.tar"], "NOPARENT"),
    (["process", "tar://GOOD.tar", "tar://AFILE/x.tar"], "AFILE"),
    (["process", "tar://GOOD.tar", "dir://FOREIGN"], "FOREIGN"),
    (["process", "tar://GOOD.tar", "quay://org"], "cannot be a destination"),
    (["process", "-f", "no-such-filter", "tar://GOOD.tar", "tar://x.tar"], "no-such-filter"),
    (["process", "-f", "exclude:colour=red", "tar://GOOD.tar", "tar://x.tar"], "colour"),
    (["process", "--platform", "linux", "tar://GOOD.tar", "tar://x.tar"], "invalid platform"),
    (["--rate-limit", "1e-300", "info", f"registry://{DEAD}/a"], "rate"),
    (["--rate-limit", "fast", "info", f"registry://{DEAD}/a"], "rate"),
    (["--retries", "-1", "info", f"registry://{DEAD}/a"], "retries"),
    (["--parallel", "0", "info", f"registry://{DEAD}/a"], "parallel"),
    (["--compression", "lz4", "info", f"registry://{DEAD}/a"], "compression"),
    (["--compression-level", "99", "info", "tar://GOOD.tar"], "level"),
    (["--username", "only-me", "info", f"registry://{DEAD}/a"], "--password"),
    (["--src-creds", "nocolon", "info", f"registry://{DEAD}/a"], "USER:PASS"),
    (["--mirror", "not-a-mirror", "info", f"registry://{DEAD}/a"], "mirror"),
    (["--middleware", "no-such-plugin", "info", f"registry://{DEAD}/a"], "no-such-plugin"),
    (["--retries", "0", "info", f"registry://{DEAD}/a"], "127.0.0.1:9"),
    (["--ca-cert", "MISSING.pem", "info", f"registry://{DEAD}/a"], "MISSING.pem"),
    (["info", "docker://busybox?socket=MISSING.sock"], "MISSING.sock"),
    (["info", "oci-layout://MISSING"], "MISSING"),
    (["info", "dir://EMPTYDIR"], "EMPTYDIR"),
    (["--authfile", "JUNK.tar", "info", f"registry://{DEAD}/a"], "JUNK.tar"),
    (["no-such-command"], "no-such-command"),
]


@pytest.mark.parametrize(("arguments", "fragment"), BATTERY, ids=[" ".join(a) for a, _ in BATTERY])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, arguments, fragment):
    monkeypatch.chdir(tmp_path)
    _archive(tmp_path / "GOOD.tar", _valid_members())
    (tmp_path / "JUNK.tar").write_bytes(b"not a tarball at all" * 100)
    (tmp_path / "DIRECTORY").mkdir()
    (tmp_path / "DIRECTORY" / "keep").write_text("precious")
    (tmp_path / "AFILE").write_text("a file, not a directory")
    (tmp_path / "FOREIGN").mkdir()
    (tmp_path / "FOREIGN" / "notes.txt").write_text("someone else's")
    (tmp_path / "EMPTYDIR").mkdir()
    before = sorted(os.listdir(tmp_path))
    outcome = run_cli("--retries", "0", "--timeout", "5", *arguments)
    outcome.assert_one_line_error(fragment)
    assert "hunter2" not in outcome.stderr and "s3cret" not in outcome.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "DIRECTORY" / "keep").read_text() == "precious"
    assert os.listdir(tmp_path / "FOREIGN") == ["notes.txt"]


def test_the_battery_is_at_least_thirty_cases():
    assert len(BATTERY) >= 30


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(["Config", "Layers", "RepoTags", "manifest.json", "c.json", "diff_ids",
                          "index.json", "layer"])  # fmt: skip


@st.composite
def hostile_archives(draw) -> dict[str, bytes]:
    """A valid docker-save archive with one or more parts replaced by something hostile."""
    members = _valid_members()
    manifest = json.loads(members["manifest.json"])
    config = json.loads(members["c.json"])
    for field in draw(st.lists(FIELDS, min_size=1, max_size=3, unique=True)):
        value = draw(JSON_VALUES)
        if field in ("Config", "Layers", "RepoTags"):
            if isinstance(manifest, list) and manifest and isinstance(manifest[0], dict):
                manifest[0][field] = value
        elif field == "manifest.json":
            manifest = value
        elif field == "c.json":
            config = value
        elif field == "diff_ids":
            config = {"rootfs": {"diff_ids": value}}
        elif field == "index.json":
            members["index.json"] = json.dumps(value).encode()
        else:
            members["l/layer.tar"] = draw(st.binary(max_size=600))
    members["manifest.json"] = json.dumps(manifest).encode()
    members["c.json"] = (
        json.dumps(config).encode() if draw(st.booleans()) else draw(st.binary(max_size=40))
    )
    return members


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=hostile_archives(), command=st.sampled_from(["process", "info"]))
def test_hostile_docker_save_archives_never_raise_a_traceback(tmp_path, members, command):
    source = _archive(tmp_path / "hostile.tar", members)
    out = tmp_path / "out.tar"
    out.unlink(missing_ok=True)
    args = ["process", f"tar://{source}", f"tar://{out}"] if command == "process" else [
        "info", f"tar://{source}"]  # fmt: skip
    outcome = run_cli(*args)
    assert "Traceback" not in outcome.stderr
    if outcome.status != 0:
        outcome.assert_one_line_error()
        assert not out.exists()
