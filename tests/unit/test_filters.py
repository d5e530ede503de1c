"""Filters: the -f spec and registry, glob matching, and each built-in filter read back."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from occystrap import compression
from occystrap.errors import OccystrapError, UsageError
from occystrap.filters import filter_kinds, parse_filter, parse_filters
from occystrap.filters.exclude import Exclude
from occystrap.filters.matching import compile_glob, compile_matcher, normalize_path
from occystrap.filters.normalize_timestamps import NormalizeTimestamps
from occystrap.filters.search import Hit, format_hits, layer_hits, print_hits
from occystrap.image import Image
from occystrap.middleware.plugins import parse_spec
from occystrap.progress import TerminalProgress

from .image_builder import context, image_of_tars, read_verified, save_tar
from .plugin_install import REPO_ROOT, install_test_plugin

# --- building layers with exact headers --------------------------------------------------------


def entry(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = 0o644, 1_700_000_000, 1000, 1000
    for key, value in fields.items():
        setattr(info, key, value)
    if info.isreg():
        info.size = len(data)
    return info, data


def tar_of(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, type=tarfile.DIRTYPE, mode=0o755)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, type=tarfile.LNKTYPE, linkname=target)


BASE = tar_of(
    directory("etc"),
    entry("etc/passwd", b"root:x:0:0\n", pax_headers={"atime": "1.5", "ctime": "2.25"}),
    entry("etc/hostname", b"box\n", mtime=1_600_000_000.75),
    directory("usr/share/doc"),
    entry("usr/share/doc/README", b"read me"),
    entry("usr/share/doc/deep/x/NOTES", b"notes"),
    entry("usr/lib/python/a.pyc", b"\x00pyc"),
    entry("usr/lib/python/a.py", b"print()"),
    entry(
        "usr/bin/ping",
        b"ELF",
        pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00 \x00"},
    ),
    entry("./usr/bin/tool", b"tool"),
    entry("usr/bin/sym", type=tarfile.SYMTYPE, linkname="tool"),
)
UPPER = tar_of(
    entry("etc/.wh.hostname"),
    entry("var/cache/.wh..wh..opq"),
    entry("usr/share/doc/NEW", b"new"),
)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def read_back(image: Image) -> list[list[tuple[tarfile.TarInfo, bytes | None]]]:
    """Every layer's members and file contents, read from the files the filter wrote."""
    layers = []
    for layer in image.layers:
        assert layer.tar_path is not None
        raw = layer.tar_path.read_bytes()
        assert layer.digest == layer.diff_id == sha256(raw)
        assert layer.size == layer.uncompressed_size == len(raw)
        with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
            members = []
            for member in archive:
                data = archive.extractfile(member)
                members.append((member, data.read() if data else None))
        layers.append(members)
    return layers


def members_of(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return archive.getmembers()


def names(layer: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[str]:
    return [member.name for member, _ in layer]


@pytest.fixture
def image(tmp_path: Path) -> Image:
    (tmp_path / "src").mkdir()
    return image_of_tars(tmp_path / "src", [BASE, UPPER])


# --- spec parsing and the registry -------------------------------------------------------------


def test_built_in_filters_are_found():
    assert {"exclude", "inspect", "normalize-timestamps", "search"} <= set(filter_kinds())
    assert filter_kinds()["exclude"].form == "exclude:pattern=GLOB[,GLOB...]"
    assert filter_kinds()["normalize-timestamps"].form == "normalize-timestamps[:ts=N]"
    assert filter_kinds()["search"].form == "search:pattern=P[,regex=BOOL][,script_friendly=BOOL]"


def test_exclude_takes_several_globs_after_one_key_or_repeated_keys():
    one_key = parse_filter("exclude:pattern=*.pyc,usr/share/doc/**")
    repeated = parse_filter("exclude:pattern=*.pyc,pattern=usr/share/doc/**")
    assert isinstance(one_key, Exclude) and one_key == repeated
    assert [glob.text for glob in one_key.globs] == ["*.pyc", "usr/share/doc/**"]
    with_equals = parse_filter("exclude:pattern=a,pattern=k=v*")
    assert isinstance(with_equals, Exclude)
    assert [glob.text for glob in with_equals.globs] == ["a", "k=v*"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown filter 'nope'; available: exclude, inspect, normalize-timestamps"),
        ("exclude:glob=x", "unknown option 'glob' for filter 'exclude'; valid: pattern"),
        (
            "search:pattern=a,regx=true",
            "unknown option 'regx' for filter 'search'; valid: pattern,",
        ),
        ("exclude", "filter 'exclude' needs pattern=GLOB[,GLOB...]"),
        ("exclude:pattern=", "filter 'exclude' needs pattern=GLOB"),
        ("inspect", "filter 'inspect' needs file=PATH"),
        ("normalize-timestamps:ts=1,ts=2", "option 'ts' given twice"),
        ("normalize-timestamps:ts=-1", "is not an integer from 0 to"),
        ("normalize-timestamps:ts=soon", "is not an integer from 0 to"),
        ("search:pattern=a,regex=maybe", "is not a boolean"),
        ("search:pattern=(,regex=true", "bad regular expression '('"),
        ("exclude:pattern=/", "empty path pattern '/'"),
        ("exclude:", "bad filter 'exclude:'"),
        ("exclude:=x", "bad filter option '=x'"),
        ("ex clude", "bad filter 'ex clude'"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(spec, message):
    with pytest.raises(UsageError) as info:
        parse_filter(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_filters_keep_the_order_given():
    built = parse_filters(["normalize-timestamps:ts=7", "exclude:pattern=a", "search:pattern=b"])
    assert [type(f).__name__ for f in built] == ["NormalizeTimestamps", "Exclude", "Search"]
    assert built[0] == NormalizeTimestamps(7)


@given(st.text())
def test_filter_spec_parser_only_ever_raises_usage_error(text):
    try:
        name, pairs = parse_spec(text, "filter", "form", continuations=True)
    except UsageError:
        return
    assert name and ":" not in name
    assert all(key and "=" not in key and "," not in value for key, value in pairs)


_VALUE = st.text(alphabet=st.characters(blacklist_characters=",="), min_size=1, max_size=8)


@given(
    name=st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
    options=st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True),
            st.lists(_VALUE, min_size=1, max_size=3),
        ),
        max_size=4,
    ),
)
def test_continued_values_belong_to_the_key_before_them(name, options):
    text = name + (
        ":" + ",".join(f"{key}={','.join(values)}" for key, values in options) if options else ""
    )
    expected = [(key, value) for key, values in options for value in values]
    assert parse_spec(text, "filter", "form", continuations=True) == (name, expected)


# --- glob matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("*.pyc", "a.pyc", True),
        ("*.pyc", "usr/lib/x/a.pyc", True),  # no '/': any depth
        ("/a.pyc", "usr/a.pyc", False),  # leading '/': anchored
        ("/a.pyc", "a.pyc", True),
        ("usr/*.pyc", "usr/lib/a.pyc", False),  # '*' stays in one component
        ("usr/**/*.pyc", "usr/a.pyc", True),  # '**' may be no directory
        ("usr/**/*.pyc", "usr/lib/x/a.pyc", True),
        ("usr/share/doc/**", "usr/share/doc", True),
        ("usr/share/doc/**", "usr/share/doc/a/b", True),
        ("usr/share/doc/**", "usr/share/docs", False),
        ("**", "anything/at/all", True),
        ("etc/", "etc", True),
        ("e?c/pass[a-z]d", "etc/passwd", True),
        ("e?c/pass[!a-z]d", "etc/passwd", False),
        ("passwd", "etc/passwd.bak", False),
    ],
)
def test_glob(pattern, path, expected):
    assert compile_glob(pattern).matches(path) is expected


def test_directory_match_takes_everything_under_it():
    glob = compile_glob("usr/share/doc")
    assert glob.matches_path_or_ancestor("usr/share/doc/a/b")
    assert not glob.matches("usr/share/doc/a/b")
    assert not glob.matches_path_or_ancestor("usr/share/docs/a")


def test_paths_are_compared_normalized():
    assert normalize_path("./usr//bin/./tool/") == "usr/bin/tool"
    assert normalize_path("/") == ""


def _oracle(pattern: str, path: str) -> bool:
    """An independent reading of the glob rules, through one regular expression."""
    body = pattern.rstrip("/")
    parts = [p for p in body.split("/") if p not in ("", ".")]
    if "/" not in body:
        parts = ["**", *parts]
    regex = ""
    for part in parts:
        if part == "**":
            regex += "(?:[^/]+/)*"
        else:
            regex += part.replace("?", "[^/]").replace("*", "[^/]*") + "/"
    return re.fullmatch(regex, path + "/") is not None


_COMPONENT = st.text(alphabet="ab", min_size=1, max_size=3)
_PATTERN_PART = st.one_of(_COMPONENT, st.sampled_from(["*", "?", "**", "a*", "*b", "?a"]))


@settings(max_examples=400)
@given(
    pattern=st.lists(_PATTERN_PART, min_size=1, max_size=4).map("/".join),
    leading=st.booleans(),
    path=st.lists(_COMPONENT, min_size=1, max_size=5).map("/".join),
)
def test_glob_agrees_with_an_independent_regex_reading(pattern, leading, path):
    pattern = ("/" if leading else "") + pattern
    assert compile_glob(pattern).matches(path) is _oracle(pattern, path)


@given(path=st.lists(_COMPONENT, min_size=1, max_size=5), cut=st.integers(0, 5))
def test_a_glob_naming_a_directory_takes_what_is_under_it(path, cut):
    cut = min(cut, len(path) - 1)
    glob = compile_glob("/" + "/".join(path[: cut + 1]))
    assert glob.matches_path_or_ancestor("/".join(path))


def test_regex_is_searched_anywhere():
    matcher = compile_matcher(r"bin/(sh|ba)", regex=True)
    assert matcher.matches("usr/bin/sh") and not matcher.matches("usr/sbin")


# --- normalize-timestamps ----------------------------------------------------------------------


def test_normalize_timestamps_rewrites_every_mtime_and_nothing_else(tmp_path, image):
    result = NormalizeTimestamps(86400).apply(image, context(tmp_path / "work"))
    before = [members_of(raw) for raw in (BASE, UPPER)]
    after = read_back(result)
    assert len(after) == 2
    for old_members, new_members in zip(before, after, strict=True):
        assert [m.name for m in old_members] == names(new_members)
        for old, (new, _) in zip(old_members, new_members, strict=True):
            assert new.mtime == 86400
            assert not {"atime", "ctime", "mtime"} & set(new.pax_headers)
            assert (new.type, new.mode, new.uid, new.linkname) == (
                old.type,
                old.mode,
                old.uid,
                old.linkname,
            )
    contents = dict((m.name, data) for m, data in after[0])
    assert contents["usr/bin/ping"] == b"ELF"
    ping = next(m for m, _ in after[0] if m.name == "usr/bin/ping")
    assert ping.pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02\x00 \x00"
    config = result.config_json
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in result.layers]
    assert config["created"] == "1970-01-02T00:00:00Z"
    assert {h["created"] for h in config["history"]} == {"1970-01-02T00:00:00Z"}
    assert [h["created_by"] for h in config["history"]] == ["test 0", "test 1"]
    assert result.manifest is None
    assert result.layers[0].media_type == compression.media_type_for(compression.NONE, False)
    assert [layer.diff_id for layer in image.layers] == [sha256(BASE), sha256(UPPER)]


def test_rewriting_is_deterministic(tmp_path, image):
    first = NormalizeTimestamps().apply(image, context(tmp_path / "one"))
    again = image_of_tars(tmp_path, [BASE, UPPER], kind=compression.ZSTD)  # other storage
    second = NormalizeTimestamps().apply(again, context(tmp_path / "two"))
    assert [layer.digest for layer in first.layers] == [layer.digest for layer in second.layers]
    assert first.config_digest == second.config_digest
    assert first.layers[0].tar_path != second.layers[0].tar_path


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_sparse_files_become_plain_files_with_their_holes_filled(tmp_path, tar_format):
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "sparse", "wb") as handle:
        handle.write(b"head")
        handle.seek(3 << 20)
        handle.write(b"tail")
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={tar_format}", "-cf", str(archive), "-C", str(tree), "."],
        check=True,
    )
    assert any(m.issparse() for m in members_of(archive.read_bytes()))
    image = image_of_tars(tmp_path, [archive.read_bytes()])
    (layer,) = read_back(NormalizeTimestamps().apply(image, context(tmp_path / "work")))
    member, data = next((m, data) for m, data in layer if m.name == "./sparse")
    assert member.type == tarfile.REGTYPE and not member.issparse()
    assert data == (tree / "sparse").read_bytes()


def test_oci_images_get_oci_layer_types(tmp_path):
    oci = image_of_tars(tmp_path, [BASE], kind=compression.ZSTD)
    oci = Image(
        oci.source, oci.config, oci.layers, None, "application/vnd.oci.image.manifest.v1+json"
    )
    result = NormalizeTimestamps().apply(oci, context(tmp_path / "work"))
    assert result.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"


def test_a_rewritten_layer_is_streamed_from_disk_and_verified_when_read(tmp_path, image):
    result = NormalizeTimestamps().apply(image, context(tmp_path / "work"))
    read_verified(result)  # its digests hold
    layer = result.layers[0]
    assert layer.tar_path is not None
    layer.tar_path.write_bytes(layer.tar_path.read_bytes()[:-1] + b"\x01")
    unverified = Image(
        result.source, result.config, (type(layer)(**{**layer.__dict__, "tar_path": None}),)
    )
    with pytest.raises(OccystrapError, match="hashes to"):
        read_verified(unverified)


# --- exclude -----------------------------------------------------------------------------------


def test_exclude_drops_matching_paths_and_what_is_under_them(tmp_path, image):
    spec = "exclude:pattern=*.pyc,usr/share/doc,pattern=etc/hostname"
    result = parse_filter(spec).apply(image, context(tmp_path / "work"))
    base, upper = read_back(result)
    assert names(base) == [
        "etc",
        "etc/passwd",
        "usr/lib/python/a.py",
        "usr/bin/ping",
        "./usr/bin/tool",
        "usr/bin/sym",
    ]
    assert names(upper) == ["etc/.wh.hostname", "var/cache/.wh..wh..opq"]
    kept = {m.name: (m.mtime, m.pax_headers.get("atime"), data) for m, data in base}
    assert kept["etc/passwd"] == (1_700_000_000, "1.5", b"root:x:0:0\n")  # untouched
    assert result.config_json["rootfs"]["diff_ids"] == [layer.diff_id for layer in result.layers]
    again = parse_filter(spec).apply(image, context(tmp_path / "again"))
    assert [layer.digest for layer in again.layers] == [layer.digest for layer in result.layers]


@pytest.mark.parametrize("kind", [compression.GZIP, compression.NONE])  # kept on disk, or not
def test_exclude_keeps_hard_links_to_dropped_files_whole(tmp_path, kind):
    layer = tar_of(
        entry("opt/big.bin", b"payload"),
        hardlink("usr/bin/first", "opt/big.bin"),
        hardlink("./usr/bin/second", "./opt/big.bin"),
        entry("opt/other", b"other"),
        hardlink("opt/link-to-other", "opt/other"),
    )
    image = image_of_tars(tmp_path, [layer], kind)
    result = parse_filter("exclude:pattern=/opt").apply(image, context(tmp_path / "work"))
    (members,) = read_back(result)
    by_name = {m.name: (m, data) for m, data in members}
    assert list(by_name) == ["usr/bin/first", "./usr/bin/second"]
    first, first_data = by_name["usr/bin/first"]
    assert first.isreg() and first_data == b"payload"
    second, _ = by_name["./usr/bin/second"]
    assert second.islnk() and second.linkname == "usr/bin/first"
    root = tmp_path / "root"
    with tarfile.open(result.layers[0].tar_path) as archive:
        archive.extractall(root, filter="tar")
    assert (root / "usr/bin/second").read_bytes() == b"payload"
    assert (root / "usr/bin/second").stat().st_ino == (root / "usr/bin/first").stat().st_ino


def test_exclude_rewrites_long_link_names_held_in_pax_records(tmp_path):
    long_dir = "opt/" + "d" * 120
    layer = tar_of(
        entry(f"{long_dir}/target", b"payload"),
        hardlink(f"keep/{'k' * 120}/first", f"{long_dir}/target"),
        hardlink("keep/second", f"{long_dir}/target"),
    )
    image = image_of_tars(tmp_path, [layer])
    result = parse_filter("exclude:pattern=/opt").apply(image, context(tmp_path / "work"))
    (members,) = read_back(result)
    (first, data), (second, _) = members
    assert first.isreg() and data == b"payload" and first.linkname == ""
    assert second.islnk() and second.linkname == first.name


def test_a_layer_that_is_not_a_tar_is_one_line(tmp_path):
    image = image_of_tars(tmp_path, [b"not a tar at all" * 64])
    with pytest.raises(OccystrapError, match="is not a tar archive|damaged tar"):
        NormalizeTimestamps().apply(image, context(tmp_path / "work"))


# --- search ------------------------------------------------------------------------------------


def test_search_names_whiteouts_as_deletions(image):
    base, upper = image.layers
    assert layer_hits(upper, compile_matcher("**")) == [
        Hit("etc/.wh.hostname", "etc/hostname", deletes=True),
        Hit("var/cache/.wh..wh..opq", "var/cache", deletes=True, opaque=True),
        Hit("usr/share/doc/NEW", "usr/share/doc/NEW"),
    ]
    assert [hit.path for hit in layer_hits(base, compile_matcher("hostname"))] == ["etc/hostname"]
    assert layer_hits(upper, compile_matcher("hostname")) == [
        Hit("etc/.wh.hostname", "etc/hostname", deletes=True)
    ]
    lines = format_hits(image, 2, upper, layer_hits(upper, compile_matcher("**")), False)
    assert lines == [
        f"library/busybox:latest layer 2/2 {upper.digest}:",
        "  /etc/hostname (deleted)",
        "  /var/cache/ (opaque: lower layers' content deleted)",
        "  /usr/share/doc/NEW",
    ]


def test_search_script_friendly_lines(image):
    base = image.layers[0]
    hits = layer_hits(base, compile_matcher(r"^usr/bin/", regex=True))
    assert format_hits(image, 1, base, hits, True) == [
        f"library/busybox:latest:{base.digest}:/usr/bin/{name}" for name in ("ping", "tool", "sym")
    ]


def test_search_filter_passes_the_image_through(tmp_path, image, capsys):
    result = parse_filter("search:pattern=*.py").apply(image, context(tmp_path / "work"))
    assert result is image
    out = capsys.readouterr().out
    assert (
        out
        == f"library/busybox:latest layer 1/2 {image.layers[0].digest}:\n  /usr/lib/python/a.py\n"
    )


def test_search_lines_are_not_overwritten_by_a_live_progress_display(image):
    screen = io.StringIO()
    screen_when_printed: list[str] = []

    class Stdout(io.StringIO):
        def write(self, text: str) -> int:
            screen_when_printed.append(screen.getvalue())
            return super().write(text)

    out = Stdout()
    console = Console(file=screen, force_terminal=True, width=100)
    with TerminalProgress("an image", console) as progress:
        progress.start("fetch:sha256:1", 100, "layer")
        _wait_for(lambda: "layer" in screen.getvalue())  # the display: title, status, one bar
        count = print_hits(image, compile_matcher("*.py"), 1, False, out, progress)
        assert count == 1 and out.getvalue().endswith("  /usr/lib/python/a.py\n")
        (before,) = screen_when_printed
        _wait_for(lambda: "layer" in screen.getvalue()[len(before) :])
        redrawn = screen.getvalue()[len(before) :]
    # What the terminal shows, stdout's lines arriving where stderr's display left the cursor.
    terminal = _Terminal()
    terminal.feed(before)
    drawn = terminal.rows[:]
    assert [row for row in drawn if row.strip()] == [], drawn  # taken off first, wholly,
    assert terminal.cursor == (0, 0)  # the cursor back where the display began
    terminal.feed(out.getvalue())
    terminal.feed(redrawn[: redrawn.index("layer")])
    # drawn below the printed lines, moving up over (erasing) none of them
    assert terminal.rows[:2] == [
        f"library/busybox:latest layer 1/2 {image.layers[0].digest}:",
        "  /usr/lib/python/a.py",
    ]
    assert terminal.cursor[0] >= 2
    assert "\x1b[1A" not in redrawn[: redrawn.index("layer")]


class _Terminal:
    """Just enough of a terminal to see what rich's display leaves on the screen: printable
    text, CR, LF, erase line (ESC[2K), cursor up (ESC[nA); colours and cursor visibility
    change nothing here. Any other control sequence fails the test."""

    _TOKEN = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])|[\r\n]|[^\x1b\r\n]")

    def __init__(self) -> None:
        self.rows: list[str] = [""]
        self.cursor = (0, 0)

    def feed(self, text: str) -> None:
        position = 0
        while position < len(text):
            token = self._TOKEN.match(text, position)
            assert token is not None, f"unexpected control sequence: {text[position:][:20]!r}"
            position = token.end()
            row, column = self.cursor
            if token.group(3) is not None:
                private, number, command = token.groups()
                if command == "A" and not private:
                    self.cursor = (max(0, row - int(number or 1)), column)
                elif command == "K" and not private and number == "2":
                    self.rows[row] = ""
                else:
                    assert (private, command) in (("", "m"), ("?", "l"), ("?", "h")), token[0]
            elif token[0] == "\r":
                self.cursor = (row, 0)
            elif token[0] == "\n":
                self.cursor = (row + 1, 0)
                if row + 1 == len(self.rows):
                    self.rows.append("")
            else:
                line = self.rows[row].ljust(column)
                self.rows[row] = line[:column] + token[0] + line[column + 1 :]
                self.cursor = (row, column + 1)


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the display was never drawn"
        time.sleep(0.01)


# --- inspect -----------------------------------------------------------------------------------


def test_inspect_appends_a_line_per_image_showing_what_filters_changed(tmp_path, image):
    record = tmp_path / "inspect.jsonl"
    chain = parse_filters(
        [f"inspect:file={record}", "exclude:pattern=*.pyc", f"inspect:file={record}"]
    )
    ctx = context(tmp_path / "work")
    result = image
    for image_filter in chain:
        result = image_filter.apply(result, ctx)
    before, after = (json.loads(line) for line in record.read_text().splitlines())
    assert before["image"] == "library/busybox" and before["tag"] == "latest"
    assert [layer["digest"] for layer in before["layers"]] == [x.digest for x in image.layers]
    assert [layer["diff_id"] for layer in after["layers"]] == [x.diff_id for x in result.layers]
    assert before["layers"][0]["created_by"] == "test 0"
    assert before["layers"][0]["size"] == image.layers[0].size
    assert after["config_digest"] == result.config_digest != before["config_digest"]


def test_inspect_that_cannot_write_is_one_line(tmp_path, image):
    target = tmp_path / "missing" / "x.jsonl"
    with pytest.raises(OccystrapError, match="inspect cannot append to .*No such file"):
        parse_filter(f"inspect:file={target}").apply(image, context(tmp_path / "work"))


# --- a third-party filter, installed as a user would -------------------------------------------


def _occystrap(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "occystrap", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{site}:{REPO_ROOT}", "PATH": "/usr/bin:/bin", "NO_PROXY": "*"},
    )


def test_filter_entry_point_of_installed_distribution_is_discovered(tmp_path, image):
    site = install_test_plugin(tmp_path)
    source, target = tmp_path / "in.tar", tmp_path / "out.tar"
    save_tar(image, source)
    run = _occystrap(site, "process", f"tar://{source}", f"tar://{target}", "-f", "retag:tag=v9")
    assert run.returncode == 0, run.stderr
    with tarfile.open(target) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["busybox:v9"]
    listed = _occystrap(site, "process", "--help")
    assert "retag:tag=TAG" in listed.stdout and "exclude:pattern=GLOB" in listed.stdout
    unknown = _occystrap(site, "process", f"tar://{source}", f"tar://{target}", "-f", "retga")
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines() == [
        "occystrap: error: unknown filter 'retga'; available: exclude, inspect,"
        " normalize-timestamps, retag, search"
    ]
