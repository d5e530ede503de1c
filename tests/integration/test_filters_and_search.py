"""Filters and `search` against the real registry, checked with skopeo and by reading back.

A filtered image is pushed to the registry (and written as a tarball); skopeo must accept it,
and its layers, read back, must hold exactly what the filters left: new mtimes, no excluded
paths, diff_ids that are the sha256 of the uncompressed bytes, and the same digests when the
same filters run again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.cli import (
    REPO_ROOT,
    assert_one_line_error,
    registry_flags,
    run_occystrap,
)
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    pull_with_skopeo,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration

TIMESTAMP = 1_234_567_890
FILTERS = [
    "-f",
    f"normalize-timestamps:ts={TIMESTAMP}",
    "-f",
    "exclude:pattern=*.pyc,usr/share/doc",
]
LAYERS = [
    {
        "etc/hostname": b"box\n",
        "usr/lib/app/a.py": b"print('a')\n",
        "usr/lib/app/a.pyc": b"\x00compiled",
        "usr/share/doc/README": b"docs",
        "usr/share/doc/app/NOTES": b"more docs",
        **random_layer(300_000, 11, "usr/bin/tool"),
    },
    {"etc/.wh.hostname": b"", "usr/lib/app/b.pyc": b"\x00b", "srv/data": b"data"},
]
KEPT = [
    ["etc/hostname", "usr/bin/tool", "usr/lib/app/a.py"],
    ["etc/.wh.hostname", "srv/data"],
]


def _seed(registry, repo: str, tmp_path: Path, manifest_format: str = "v2s2") -> str:
    layout = tmp_path / "seed"
    build_oci_layout(layout, LAYERS)
    push_with_skopeo(layout, registry, repo, "v1", manifest_format)
    return f"registry://{registry.host}/{repo}:v1"


def _members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return archive.getmembers()


def _check_layers(tars: list[bytes], diff_ids: list[str]) -> None:
    """What the filters promised, read from the layer tars themselves."""
    assert [f"sha256:{hashlib.sha256(raw).hexdigest()}" for raw in tars] == diff_ids
    for raw, kept in zip(tars, KEPT, strict=True):
        members = _members(raw)
        assert sorted(m.name for m in members) == kept
        assert {m.mtime for m in members} == {TIMESTAMP}


def _layers_of_oci_layout(layout: Path) -> tuple[list[bytes], dict]:
    """(uncompressed layer tars, config) of the one image in an OCI layout skopeo wrote."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    tars = []
    for descriptor in manifest["layers"]:
        data = (blobs / descriptor["digest"][7:]).read_bytes()
        tars.append(gzip.decompress(data) if descriptor["mediaType"].endswith("gzip") else data)
    return tars, config


@pytest.mark.parametrize("manifest_format", ["v2s2", "oci"])
def test_filtered_push_is_accepted_by_skopeo_and_deterministic(
    registry_plain, unique_repo, tmp_path, manifest_format
):
    source = _seed(registry_plain, unique_repo, tmp_path, manifest_format)
    flags = registry_flags(registry_plain)
    run_occystrap(
        *flags, "process", source, f"registry://{registry_plain.host}/{unique_repo}:f1", *FILTERS
    )
    run_occystrap(
        *flags, "process", source, f"registry://{registry_plain.host}/{unique_repo}:f2", *FILTERS
    )

    first = skopeo_inspect(registry_plain, f"{unique_repo}:f1", raw=True)
    second = skopeo_inspect(registry_plain, f"{unique_repo}:f2", raw=True)
    assert first == second  # the same input and filters give the same manifest
    original = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    assert [layer["digest"] for layer in first["layers"]] != [
        layer["digest"] for layer in original["layers"]
    ]
    expected_oci = manifest_format == "oci"
    assert ("oci" in first["mediaType"]) is expected_oci
    assert all(("oci" in layer["mediaType"]) is expected_oci for layer in first["layers"])

    layout = tmp_path / "pulled"
    pull_with_skopeo(registry_plain, f"{unique_repo}:f1", layout)  # skopeo verifies every blob
    tars, config = _layers_of_oci_layout(layout)
    _check_layers(tars, config["rootfs"]["diff_ids"])
    assert config["created"] == "2009-02-13T23:31:30Z"


def test_filtered_tarball_is_read_by_skopeo(registry_plain, unique_repo, tmp_path):
    source = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    outputs = [tmp_path / "one.tar", tmp_path / "two.tar"]
    for output in outputs:
        run_occystrap(*flags, "process", source, f"tar://{output}", *FILTERS)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()

    inspected = json.loads(run_skopeo("inspect", f"docker-archive:{outputs[0]}").stdout)
    assert len(inspected["Layers"]) == 2
    run_skopeo("copy", "--quiet", f"docker-archive:{outputs[0]}", f"oci:{tmp_path / 'copied'}:x")
    tars, config = _layers_of_oci_layout(tmp_path / "copied")
    _check_layers(tars, config["rootfs"]["diff_ids"])


def test_filters_between_two_tarballs_chain_in_order(registry_plain, unique_repo, tmp_path):
    source = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    record = tmp_path / "inspect.jsonl"
    result = run_occystrap(
        *flags,
        "process",
        source,
        f"tar://{tmp_path / 'out.tar'}",
        "-f",
        f"inspect:file={record}",
        "-f",
        "exclude:pattern=**/*.pyc",
        "-f",
        "search:pattern=*.py*,script_friendly=true",
        "-f",
        f"inspect:file={record}",
    )
    before, after = (json.loads(line) for line in record.read_text().splitlines())
    assert before["image"] == f"{registry_plain.host}/{unique_repo}"
    assert before["tag"] == "v1" and before["manifest_digest"] is not None
    assert after["manifest_digest"] is None
    assert [layer["created_by"] for layer in after["layers"]] == ["test layer 0", "test layer 1"]
    digest = after["layers"][0]["digest"]
    assert result.stdout.splitlines() == [
        f"{registry_plain.host}/{unique_repo}:v1:{digest}:/usr/lib/app/a.py"
    ]


def test_search_command_lists_matches_and_deletions(registry_plain, unique_repo, tmp_path):
    source = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    layers = skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Layers"]
    work = tmp_path / "scratch"
    result = run_occystrap(*flags, "--temp-dir", str(work), "search", source, "*.py*")
    name = f"{registry_plain.host}/{unique_repo}:v1"
    assert result.stdout.splitlines() == [
        f"{name} layer 1/2 {layers[0]}:",
        "  /usr/lib/app/a.py",
        "  /usr/lib/app/a.pyc",
        f"{name} layer 2/2 {layers[1]}:",
        "  /usr/lib/app/b.pyc",
    ]
    assert "3 paths match" in result.stderr
    assert list(work.iterdir()) == []  # nothing kept

    deleted = run_occystrap(*flags, "search", source, "etc/host*")
    assert "  /etc/hostname (deleted)" in deleted.stdout.splitlines()

    scripted = run_occystrap(
        *flags, "search", "--regex", "--script-friendly", source, r"^(srv|etc)/"
    )
    assert scripted.stdout.splitlines() == [
        f"{name}:{layers[0]}:/etc/hostname",
        f"{name}:{layers[1]}:/etc/.wh.hostname",
        f"{name}:{layers[1]}:/srv/data",
    ]


def test_search_reads_tarballs_too(registry_plain, unique_repo, tmp_path):
    source = _seed(registry_plain, unique_repo, tmp_path)
    tarball = tmp_path / "image.tar"
    run_occystrap(*registry_flags(registry_plain), "process", source, f"tar://{tarball}")
    result = run_occystrap("search", "--script-friendly", f"tar://{tarball}", "srv/*")
    hits = result.stdout.splitlines()
    assert len(hits) == 1 and hits[0].endswith(":/srv/data"), hits


def test_filters_on_an_index_write_the_chosen_platform(registry_plain, unique_repo, tmp_path):
    platforms = {("linux", "amd64"): [LAYERS[0]], ("linux", "arm64"): [{"arm": b"64"}]}
    build_multiarch_layout(tmp_path / "multi", platforms)
    push_multiarch_with_skopeo(tmp_path / "multi", registry_plain, unique_repo, "v1")
    flags = registry_flags(registry_plain)
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    target = f"registry://{registry_plain.host}/{unique_repo}:arm"
    run_occystrap(*flags, "--architecture", "arm64", "process", source, target, *FILTERS)
    pushed = skopeo_inspect(registry_plain, f"{unique_repo}:arm", raw=True)
    assert "index" not in pushed["mediaType"] and "list" not in pushed["mediaType"]
    pull_with_skopeo(registry_plain, f"{unique_repo}:arm", tmp_path / "pulled")
    (tar,), config = _layers_of_oci_layout(tmp_path / "pulled")
    assert config["architecture"] == "arm64"
    assert [(m.name, m.mtime) for m in _members(tar)] == [("arm", TIMESTAMP)]


def test_expanded_directory_lacks_excluded_paths_and_can_be_searched(
    registry_plain, unique_repo, tmp_path
):
    source = _seed(registry_plain, unique_repo, tmp_path)
    out = tmp_path / "tree"
    run_occystrap(
        *registry_flags(registry_plain), "process", source, f"dir://{out}?expand=true", *FILTERS
    )
    rootfs = out / "rootfs"
    found = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if not p.is_dir())
    assert found == ["srv/data", "usr/bin/tool", "usr/lib/app/a.py"]  # etc/hostname deleted
    assert {p.stat().st_mtime for p in rootfs.rglob("*") if not p.is_dir()} == {TIMESTAMP}
    result = run_occystrap("search", f"dir://{out}", "**")
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == [f"/{path}" for path in KEPT[0]] + ["/etc/hostname (deleted)", "/srv/data"]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("bogus", "unknown filter 'bogus'; available: exclude, inspect, normalize-timestamps"),
        ("exclude:patern=x", "unknown option 'patern' for filter 'exclude'; valid: pattern"),
        ("normalize-timestamps:ts=yesterday", "is not an integer"),
    ],
)
def test_bad_filters_fail_before_any_work_on_one_line(tmp_path, spec, fragment):
    result = run_occystrap(
        "process",
        "registry://127.0.0.1:9/nothing:here",
        f"tar://{tmp_path / 'x.tar'}",
        "-f",
        spec,
        check=False,
    )
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "x.tar").exists()


def test_process_help_lists_the_filters():
    text = " ".join(run_occystrap("process", "--help").stdout.split())
    for form in (
        "exclude:pattern=GLOB[,GLOB...]",
        "inspect:file=PATH",
        "normalize-timestamps[:ts=N]",
        "search:pattern=P[,regex=BOOL][,script_friendly=BOOL]",
    ):
        assert form in text, text


def test_search_exits_1_on_no_match_and_quietly_on_a_closed_pipe(
    registry_plain, unique_repo, tmp_path
):
    """As grep: 1 when nothing matches; `search | head` ends without an error line."""
    source = _seed(registry_plain, unique_repo, tmp_path)
    flags = registry_flags(registry_plain)
    nothing = run_occystrap(*flags, "search", source, "no-such-file-*", check=False)
    assert nothing.returncode == 1, nothing.stderr
    assert nothing.stdout == "" and "0 paths match" in nothing.stderr
    piped = subprocess.run(
        f"{sys.executable} -m occystrap {' '.join(flags)} search {source} '*' | head -1",
        shell=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True,
    )  # fmt: skip
    assert len(piped.stdout.splitlines()) == 1
    assert "error" not in piped.stderr and "Traceback" not in piped.stderr, piped.stderr


def test_info_and_search_escape_control_characters(registry_plain, unique_repo, tmp_path):
    """A label or path cannot send escape sequences to the terminal or fake output lines."""
    layout = tmp_path / "hostile"
    build_oci_layout(
        layout,
        [{"evil\x1b[31mred\nfake line": b"x"}],
        config_overrides={
            "config": {
                "Env": ["A=\x1b]0;title\x07", "B=line\rover"],
                "Labels": {"l": "one\ntwo"},
            }
        },
    )
    push_with_skopeo(layout, registry_plain, unique_repo, "v1")
    source = f"registry://{registry_plain.host}/{unique_repo}:v1"
    flags = registry_flags(registry_plain)
    shown = run_occystrap(*flags, "info", source).stdout
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert "A=\\x1b]0;title\\x07" in shown and "B=line\\rover" in shown
    assert "label:           l=one\\ntwo" in shown
    found = run_occystrap(*flags, "search", "--script-friendly", source, "evil*").stdout
    assert found.count("\n") == 1 and "\x1b" not in found
    assert found.rstrip("\n").endswith("/evil\\x1b[31mred\\nfake line")
