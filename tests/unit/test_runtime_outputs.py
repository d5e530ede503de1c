"""oci:// bundles and mounts:// layers: the runtime config, users, overlay form, staging."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.endpoints import parse_uri
from occystrap.endpoints.mounts import MountsOutput, mount_command
from occystrap.endpoints.oci import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    BundleOutput,
    ProcessUser,
    container_settings,
    process_args,
    resolve_user,
    runtime_spec,
)
from occystrap.errors import OccystrapError, UsageError
from occystrap.extract import OVERLAY_OPAQUE_XATTR, apply_layer, read_file_in_root

from .image_builder import context, layer_tar, make_image

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\nbroken line\n"
GROUP = b"root:x:0:\napp:x:2345:\nextra:x:3456:other,app\nnamed:x:77:\n"
LAYERS: list[dict] = [
    {"etc/": None, "etc/passwd": PASSWD, "etc/group": GROUP, "gone": b"x", "d/": None,
     "d/old": b"old", "keep": b"lower"},
    {".wh.gone": b"", "d/": None, "d/.wh..wh..opq": b"", "d/new": b"new", "keep": b"upper"},
]  # fmt: skip
SETTINGS = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["FOO=1"]}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_bytes(PASSWD)
    (root / "etc/group").write_bytes(GROUP)
    return root


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ProcessUser(0, 0)),
        ("0", ProcessUser(0, 0)),
        ("app", ProcessUser(1234, 2345, (3456,))),
        ("1234", ProcessUser(1234, 2345, (3456,))),  # primary group from /etc/passwd
        ("4321", ProcessUser(4321, 0)),  # not listed: group 0, as docker does
        ("app:extra", ProcessUser(1234, 3456)),
        ("app:77", ProcessUser(1234, 77, (3456,))),
        ("4321:named", ProcessUser(4321, 77)),
        ("root", ProcessUser(0, 0)),
    ],
)
def test_users_resolve_in_the_images_own_account_files(rootfs, user, expected):
    assert resolve_user(user, rootfs) == expected


@pytest.mark.parametrize(
    ("user", "fragment"),
    [("nobody", "user 'nobody'"), ("app:wheel", "group 'wheel'"), ("12:nogroup", "group")],
)
def test_unknown_names_are_one_line_errors(rootfs, user, fragment):
    with pytest.raises(OccystrapError, match=fragment) as raised:
        resolve_user(user, rootfs)
    assert "\n" not in str(raised.value)


def test_a_name_without_account_files_is_an_error_not_a_host_lookup(tmp_path):
    """/etc/passwd reached through a symlink is the host's: it must never be read."""
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to("/etc")
    with pytest.raises(OccystrapError, match="user 'root'"):
        resolve_user("root", root)
    assert resolve_user("5:6", root) == ProcessUser(5, 6)
    (root / "etc").unlink()
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(OccystrapError, match="user 'root'"):
        resolve_user("root", root)


@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_numeric_user_and_group_are_taken_as_given(uid, gid):
    assert resolve_user(f"{uid}:{gid}", Path("/nonexistent")) == ProcessUser(uid, gid)


def test_read_file_in_root_reads_only_regular_files_inside(tmp_path):
    (tmp_path / "file").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    assert read_file_in_root(tmp_path, "file", 4) == b"0123"
    assert read_file_in_root(tmp_path, "link", 4) is None
    assert read_file_in_root(tmp_path, "fifo", 4) is None  # and does not hang
    assert read_file_in_root(tmp_path, "missing", 4) is None
    assert read_file_in_root(tmp_path, "../file", 4) is None


def test_runtime_spec_takes_the_process_from_the_image_config():
    settings = {**SETTINGS, "WorkingDir": "srv/app"}
    spec = runtime_spec(settings, process_args(settings), ProcessUser(0, 0), "app")
    process = spec["process"]
    assert process["args"] == ["/bin/sh", "-c", "echo hi"]
    assert process["env"] == [DEFAULT_PATH, "FOO=1"]
    assert process["cwd"] == "/srv/app"
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["terminal"] is False
    assert process["capabilities"]["effective"] == DEFAULT_CAPABILITIES
    assert process["rlimits"][0]["type"] == "RLIMIT_NOFILE"
    assert spec["ociVersion"].startswith("1.0.")
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["hostname"] == "app"
    assert {ns["type"] for ns in spec["linux"]["namespaces"]} == {
        "pid", "ipc", "uts", "mount", "network",
    }  # fmt: skip
    assert [m["destination"] for m in spec["mounts"]][:6] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
    ]  # fmt: skip
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]


def test_runtime_spec_keeps_the_images_path_and_drops_capabilities_for_other_users():
    settings = {"Cmd": ["/app"], "Env": ["PATH=/opt/bin"]}
    spec = runtime_spec(settings, process_args(settings), ProcessUser(7, 8, (9,)), "h")
    assert spec["process"]["env"] == ["PATH=/opt/bin"]
    assert spec["process"]["cwd"] == "/"
    assert spec["process"]["user"] == {"uid": 7, "gid": 8, "additionalGids": [9]}
    assert spec["process"]["capabilities"]["effective"] == []


def test_an_image_without_a_command_or_for_another_os_is_refused():
    with pytest.raises(OccystrapError, match="neither Entrypoint nor Cmd"):
        process_args({"Env": []})
    with pytest.raises(OccystrapError, match="'windows'"):
        container_settings(json.dumps({"os": "windows", "config": {}}).encode())


def test_bundle_holds_the_merged_rootfs_and_config(tmp_path):
    image = make_image(tmp_path, LAYERS, settings={**SETTINGS, "User": "app"})
    bundle = tmp_path / "bundle"
    BundleOutput(bundle, context(tmp_path / "work")).write(image)
    root = bundle / "rootfs"
    assert not (root / "gone").exists()
    assert sorted(os.listdir(root / "d")) == ["new"]
    assert (root / "keep").read_bytes() == b"upper"
    spec = json.loads((bundle / "config.json").read_bytes())
    assert spec["process"]["user"] == {"uid": 1234, "gid": 2345, "additionalGids": [3456]}
    assert spec["hostname"] == "busybox"
    assert sorted(os.listdir(tmp_path)) == sorted(["bundle", "work", *_blobs(tmp_path)])


def _blobs(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith("blob-")]


def test_a_foreign_directory_is_refused_and_an_earlier_bundle_replaced(tmp_path):
    image = make_image(tmp_path, LAYERS, settings=SETTINGS)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious").write_text("mine")
    with pytest.raises(OccystrapError, match="not an earlier occystrap oci:// output"):
        parse_uri(f"oci://{foreign}").open_output(context(tmp_path / "work"))
    assert os.listdir(foreign) == ["precious"]

    bundle = tmp_path / "bundle"
    output = parse_uri(f"oci://{bundle}").open_output(context(tmp_path / "work"))
    output.write(image)
    (bundle / "rootfs/stale").write_text("from the last run")
    output = parse_uri(f"oci://{bundle}").open_output(context(tmp_path / "work"))
    output.write(image)
    assert not (bundle / "rootfs/stale").exists()
    assert (bundle / "config.json").is_file()


def test_a_failed_bundle_leaves_the_earlier_one_and_no_staging(tmp_path):
    bundle = tmp_path / "bundle"
    good = make_image(tmp_path, LAYERS, settings=SETTINGS)
    BundleOutput(bundle, context(tmp_path / "work")).write(good)
    before = (bundle / "config.json").read_bytes()
    unknown_user = make_image(tmp_path, LAYERS, settings={**SETTINGS, "User": "ghost"})
    with pytest.raises(OccystrapError, match="user 'ghost'"):
        BundleOutput(bundle, context(tmp_path / "work")).write(unknown_user)
    assert (bundle / "config.json").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]


def test_overlay_form_keeps_whiteouts_and_opaque_directories(tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "outside").write_text("untouched")
    tar = layer_tar(
        {"d/": None, "d/.wh..wh..opq": b"", "d/new": b"n", ".wh.gone": b"", "e/.wh.x": b""}
    )
    apply_layer(io.BytesIO(tar), layer, overlay=True)
    whiteout = os.lstat(layer / "gone")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert stat.S_ISCHR(os.lstat(layer / "e/x").st_mode)
    assert os.getxattr(layer / "d", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (layer / "d/new").read_bytes() == b"n"
    with pytest.raises(OSError):
        os.getxattr(layer / "e", OVERLAY_OPAQUE_XATTR)
    assert (tmp_path / "outside").read_text() == "untouched"
    assert sorted(os.listdir(layer)) == ["d", "e", "gone"]


def test_mounts_output_lays_layers_out_topmost_first(tmp_path, capsys):
    image = make_image(tmp_path, LAYERS)
    target = tmp_path / "mnt"
    output = MountsOutput(target, context(tmp_path / "work"))
    output.write(image)
    names = [f"{n:03d}-{layer.diff_id[7:19]}" for n, layer in enumerate(image.layers)]
    assert sorted(os.listdir(target / "layers")) == names
    lowerdir = ":".join(str(target / "layers" / name) for name in reversed(names))
    assert (target / "lowerdir").read_text() == lowerdir + "\n"
    assert output.mount_command == shlex.join(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lowerdir},upperdir={target}/upper,workdir={target}/work", f"{target}/merged"]
    )  # fmt: skip
    assert capsys.readouterr().out == output.mount_command + "\n"
    assert output.mount_command in (target / "mount.sh").read_text()
    assert os.access(target / "mount.sh", os.X_OK)
    assert all((target / name).is_dir() for name in ("upper", "work", "merged"))
    assert (target / "layers" / names[0] / "gone").read_bytes() == b"x"
    assert stat.S_ISCHR(os.lstat(target / "layers" / names[1] / "gone").st_mode)


def test_mount_command_escapes_colons_and_refuses_commas():
    command = mount_command(Path("/srv/a:b"), ["001-x", "000-y"])
    assert "lowerdir=/srv/a\\:b/layers/001-x:/srv/a\\:b/layers/000-y," in command
    assert "upperdir=/srv/a\\:b/upper" in command
    with pytest.raises(UsageError, match="','"):
        mount_command(Path("/srv/a,b"), ["000-y"])


def test_a_long_lowerdir_list_mounts_from_the_layers_directory_with_short_names():
    """The kernel takes mount options in one page: long absolute lists fail to mount."""
    path = Path("/srv/" + "deep/" * 20)
    names = [f"{n:03d}-0123456789ab" for n in range(99, -1, -1)]
    command = mount_command(path, names)
    cd, _, mount = command.partition(" && ")
    assert cd == f"cd {path / 'layers'}"
    options = shlex.split(mount)[5]
    assert options == f"lowerdir={':'.join(names)},upperdir=../upper,workdir=../work"
    assert shlex.split(mount)[6] == "../merged"
    with pytest.raises(OccystrapError, match="300 layers"):
        mount_command(path, [f"{n:03d}-0123456789ab" for n in range(300)])


def test_mounts_needs_root_and_refuses_foreign_directories(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes").write_text("mine")
    uri = parse_uri(f"mounts://{foreign}")
    with pytest.raises(OccystrapError, match="not an earlier occystrap mounts:// output"):
        uri.open_output(context(tmp_path / "work"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(OccystrapError, match="needs root"):
        parse_uri(f"mounts://{tmp_path / 'new'}").open_output(context(tmp_path / "work"))
    assert os.listdir(foreign) == ["notes"]


@pytest.mark.parametrize("output_class", [BundleOutput, MountsOutput])
def test_a_corrupt_layer_leaves_nothing_behind(tmp_path, output_class):
    image = make_image(tmp_path, LAYERS, settings=SETTINGS)
    blob = image.layers[1].blob.path
    blob.write_bytes(blob.read_bytes()[:-8] + bytes(8))
    target = tmp_path / "out"
    with pytest.raises(OccystrapError):
        output_class(target, context(tmp_path / "work")).write(image)
    assert not target.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".out")]


def test_overlay_form_makes_a_directory_deleted_and_made_again_opaque(tmp_path):
    """Without the opaque mark, the lower layers' entries would show through again."""
    tar = layer_tar({".wh.d": b"", "d/": None, "d/f": b"new", ".wh.e": b"", "e": b"file"})
    apply_layer(io.BytesIO(tar), tmp_path, overlay=True)
    assert os.getxattr(tmp_path / "d", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (tmp_path / "d/f").read_bytes() == b"new"
    assert (tmp_path / "e").read_bytes() == b"file"


@pytest.mark.parametrize("name", ["sub/.wh..", "sub/.wh..."])
def test_overlay_whiteouts_of_dot_and_dotdot_delete_nothing(tmp_path, name):
    """Skipped or refused (a hostile layer), but never a deletion of the layer or its parent."""
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "outside").write_text("untouched")
    with contextlib.suppress(OccystrapError):
        tar = layer_tar({"sub/": None, "sub/f": b"f", name: b""})
        apply_layer(io.BytesIO(tar), layer, overlay=True)
    assert (tmp_path / "outside").read_text() == "untouched"
    assert (layer / "sub/f").read_bytes() == b"f"


SETUID_LAYERS: list[dict] = [{"bin/": None, "bin/su": (b"su", 0o4755), "dev/": None}]


@pytest.mark.parametrize(("query", "mode"), [("", 0o755), ("?setuid=true", 0o4755)])
def test_bundles_keep_setuid_bits_only_when_asked(tmp_path, query, mode):
    image = make_image(tmp_path, SETUID_LAYERS, settings=SETTINGS)
    bundle = tmp_path / "bundle"
    parse_uri(f"oci://{bundle}{query}").open_output(context(tmp_path / "work")).write(image)
    assert stat.S_IMODE((bundle / "rootfs/bin/su").stat().st_mode) == mode


@pytest.mark.parametrize("scheme", ["oci", "mounts"])
def test_the_expansion_budget_stops_a_bomb_and_leaves_nothing(tmp_path, scheme):
    image = make_image(tmp_path, [{"big": bytes(4 * 1024 * 1024)}], settings=SETTINGS)
    target = tmp_path / "out"
    output = parse_uri(f"{scheme}://{target}?max_expand=1M").open_output(context(tmp_path / "w"))
    with pytest.raises(OccystrapError, match="expansion budget"):
        output.write(image)
    assert not target.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".out")]


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("oci:///b?devices=maybe", "not a boolean"),
        ("mounts:///b?max_expand=lots", "max_expand"),
        ("oci:///b?expand=true", "unknown option 'expand'"),
    ],
)
def test_bad_options_are_usage_errors(uri, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_uri(uri)
