"""Bad input of every kind through the real CLI: one line on stderr, a non-zero exit, no
traceback, and nothing left behind. Plus generated hostile docker-save archives."""

from __future__ import annotations

import io
import json
import os
import shutil
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


NESTED = b"[" * 100_000


def _write_nested_inputs(where: Path) -> None:
    """Every file kind occystrap parses as JSON, nested far past any recursion limit."""
    _archive(where / "NESTED-MANIFEST.tar", {**_valid_members(), "manifest.json": NESTED})
    _archive(where / "NESTED-CONFIG.tar", {**_valid_members(), "c.json": NESTED})
    (where / "NESTED.json").write_bytes(NESTED)
    layout = where / "NESTED-LAYOUT"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_bytes(b'{"manifests": ' + NESTED)


def _write_more_inputs(where: Path) -> None:
    """Archives and links for the destination, image-choice and runtime cases."""
    (where / "DEVLINK").symlink_to("/dev/null")
    _archive(where / "NESTED-INDEX.tar", {**_valid_members(), "index.json": NESTED})
    nested_dir = where / "NESTED-DIR"
    nested_dir.mkdir()
    (nested_dir / ".occystrap").write_text('{"format": "occystrap-dir", "version": 1}')
    (nested_dir / "manifest.json").write_bytes(NESTED)
    two = _valid_members()
    entry = json.loads(two["manifest.json"])[0]
    two["manifest.json"] = json.dumps([entry, {**entry, "RepoTags": ["c:d"]}]).encode()
    _archive(where / "TWO.tar", two)
    layer = _owned_layer(2**32, 0)
    config = {"rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}
    _archive(
        where / "OWNER.tar",
        {**_valid_members(), "c.json": json.dumps(config).encode(), "l/layer.tar": layer},
    )
    config = json.loads(_valid_members()["c.json"])
    config["config"] = {"Cmd": "/bin/sh"}
    _archive(where / "BADCMD.tar", {**_valid_members(), "c.json": json.dumps(config).encode()})


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
    # Nesting deep enough to overflow Python's recursive parser, wherever JSON is read.
    (["info", "tar://NESTED-MANIFEST.tar"], "nests deeper than 100 levels"),
    (["info", "tar://NESTED-CONFIG.tar"], "nests deeper than 100 levels"),
    (["process", "tar://NESTED-CONFIG.tar", "tar://x.tar"], "nests deeper than 100 levels"),
    (["--authfile", "NESTED.json", "info", f"registry://{DEAD}/a"], "nests deeper"),
    (["info", "oci-layout://NESTED-LAYOUT"], "nests deeper"),
    (["info", "tar://NESTED-INDEX.tar"], "nests deeper"),
    (["info", "dir://NESTED-DIR"], "nests deeper"),
    # tar:// destinations replace nothing unasked, devices never; image choice in sources.
    (["process", "tar://GOOD.tar", "tar://AFILE"], "already exists"),
    (["process", "tar://GOOD.tar", "tar://DEVLINK"], "never replaced"),
    (["--force", "process", "tar://GOOD.tar", "tar:///dev/null"], "never replaced"),
    (["--force", "process", "tar://GOOD.tar", "tar://DIRECTORY"], "is a directory"),
    (["process", "tar://GOOD.tar", "tar://AFILE?overwrite=maybe"], "not a boolean"),
    (["process", "tar://GOOD.tar", "tar://x.tar@1"], "pick an image to read"),
    (["process", "tar://GOOD.tar?overwrite=true", "tar://x.tar"], "applies to a destination"),
    (["info", "tar://GOOD.tar?image="], "has no value"),
    (["info", "tar://GOOD.tar?colour=red"], "unknown option 'colour'"),
    (["info", "tar://GOOD.tar@3"], "no @3"),
    (["info", "tar://TWO.tar?image=nope:1"], "no image tagged 'nope:1'"),
    (["info", "tar://TWO.tar"], "holds 2 images"),
    # Layers and configs no kernel or runtime can take.
    (["process", "tar://OWNER.tar", "dir://out?expand=true"], "no Linux system can hold"),
    (["process", "tar://BADCMD.tar", "oci://bundle"], 'Cmd is "/bin/sh"'),
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
    _write_nested_inputs(tmp_path)
    _write_more_inputs(tmp_path)
    before = sorted(os.listdir(tmp_path))
    outcome = run_cli("--retries", "0", "--timeout", "5", *arguments)
    outcome.assert_one_line_error(fragment)
    assert "hunter2" not in outcome.stderr and "s3cret" not in outcome.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "DIRECTORY" / "keep").read_text() == "precious"
    assert os.listdir(tmp_path / "FOREIGN") == ["notes.txt"]


def test_the_battery_is_at_least_sixty_cases():
    assert len(BATTERY) >= 60


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(["Config", "Layers", "RepoTags", "manifest.json", "c.json", "diff_ids",
                          "index.json", "layer", "nested", "owner"])  # fmt: skip
# Nesting past any recursion limit, as a whole document or inside a valid-looking one.
NESTED_JSON = st.builds(
    lambda depth, opening, prefix: prefix + opening * depth,
    st.integers(200, 60_000),
    st.sampled_from([b"[", b'{"a":', b'[{"k":']),
    st.sampled_from([b"", b'{"rootfs": {"diff_ids": ', b'[{"Config": "c.json", "Layers": ']),
)
# Owners a tar header can hold but no kernel can: 2**32 and past, or negative.
OVERFLOWING_IDS = st.integers(2**32 - 1, 2**63) | st.integers(-(2**40), -1)


def _owned_layer(uid: int, gid: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("etc/hosts")
        info.size, info.uid, info.gid = 4, uid, gid
        archive.addfile(info, io.BytesIO(b"host"))
    return buffer.getvalue()


@st.composite
def hostile_archives(draw) -> dict[str, bytes]:
    """A valid docker-save archive with one or more parts replaced by something hostile."""
    members = _valid_members()
    manifest = json.loads(members["manifest.json"])
    config = json.loads(members["c.json"])
    fields = draw(st.lists(FIELDS, min_size=1, max_size=3, unique=True))
    for field in fields:
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
        elif field == "nested":
            nested_member = draw(st.sampled_from(["manifest.json", "c.json", "index.json"]))
        elif field == "owner":
            uid = draw(OVERFLOWING_IDS | st.just(0))
            members["l/layer.tar"] = _owned_layer(uid, draw(OVERFLOWING_IDS | st.just(0)))
        else:
            members["l/layer.tar"] = draw(st.binary(max_size=600))
    members["manifest.json"] = json.dumps(manifest).encode()
    members["c.json"] = (
        json.dumps(config).encode() if draw(st.booleans()) else draw(st.binary(max_size=40))
    )
    if "nested" in fields:
        members[nested_member] = draw(NESTED_JSON)
    return members


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=hostile_archives(), command=st.sampled_from(["process", "expand", "info"]))
def test_hostile_docker_save_archives_never_raise_a_traceback(tmp_path, members, command):
    source = _archive(tmp_path / "hostile.tar", members)
    out = tmp_path / "out"
    if out.is_dir():
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    args = {
        "process": ["process", f"tar://{source}", f"tar://{out}"],
        "expand": ["process", f"tar://{source}", f"dir://{out}?expand=true"],
        "info": ["info", f"tar://{source}"],
    }[command]
    outcome = run_cli(*args)
    assert "Traceback" not in outcome.stderr
    if outcome.status != 0:
        outcome.assert_one_line_error()
        assert not out.exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ["info", f"registry://{DEAD}/a", "--retries", "0"],
        ["info", "--retries=0", f"registry://{DEAD}/a"],
        ["--retries", "0", "info", f"registry://{DEAD}/a", "--insecure"],
        [
            "process",
            "-f",
            "exclude:pattern=x",
            f"registry://{DEAD}/a",
            "tar://x.tar",
            "-j",
            "2",
            "--retries",
            "0",
        ],
    ],  # fmt: skip
)
def test_global_options_are_accepted_after_the_command(tmp_path, monkeypatch, arguments):
    """Not "No such option": the run gets as far as the (dead) registry."""
    monkeypatch.chdir(tmp_path)
    run_cli("--timeout", "5", *arguments).assert_one_line_error("127.0.0.1:9")
    assert os.listdir(tmp_path) == []


def test_a_commands_own_option_wins_over_a_global_one_of_the_same_name():
    # login's own -u/--username, not the global --username (which needs --password).
    outcome = run_cli("login", f"{DEAD}", "--username", "me", "--password-stdin")
    assert "--password go together" not in outcome.stderr


def test_a_host_directory_given_as_certs_dir_is_explained(tmp_path, monkeypatch):
    """skopeo's --cert-dir takes a host's directory; occystrap's --certs-dir a root of them."""
    monkeypatch.chdir(tmp_path)
    host_dir = tmp_path / "registry.example"
    host_dir.mkdir()
    (host_dir / "ca.crt").write_text("not really a certificate")
    outcome = run_cli("--certs-dir", str(host_dir), "info", f"registry://{DEAD}/a")
    outcome.assert_one_line_error("is a host's directory", "--src-cert-dir")
