"""Plug-ins: spec parsing, registration, wrapping order, errors, the header plug-in, discovery."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap import entrypoints
from occystrap.errors import UsageError
from occystrap.middleware import plugins
from occystrap.middleware.base import Middleware
from occystrap.middleware.header import HeaderMiddleware, header_middleware
from occystrap.middleware.plugins import (
    apply_plugins,
    available_middlewares,
    parse_middleware_spec,
    register_middleware,
)

from .plugin_install import REPO_ROOT, install_test_plugin


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(plugins, "_registered", {})


class Tag(Middleware):
    """Appends its label to the `X-Order` header, so wrapping order is visible."""

    def __init__(self, next_transport: httpx.BaseTransport, label: str) -> None:
        super().__init__(next_transport)
        self.label = label

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        existing = request.headers.get("X-Order")
        request.headers["X-Order"] = f"{existing},{self.label}" if existing else self.label
        return self.next.handle_request(request)


def tag_factory(next_transport: httpx.BaseTransport, options: dict[str, str]) -> Tag:
    return Tag(next_transport, options["label"])


# --- spec parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("header", ("header", {})),
        ("header:X-A=1", ("header", {"X-A": "1"})),
        ("header:X-A=1,X-B=two", ("header", {"X-A": "1", "X-B": "two"})),
        ("sign:key=a=b==", ("sign", {"key": "a=b=="})),
        ("x:empty=", ("x", {"empty": ""})),
        ("my_plugin.v2-x:a=b", ("my_plugin.v2-x", {"a": "b"})),
        ("x:url=http://h:1/p", ("x", {"url": "http://h:1/p"})),
    ],
)
def test_parse_middleware_spec(value, expected):
    assert parse_middleware_spec(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":a=b",
        "header:",
        "header:X-A",
        "header:=1",
        "header:X-A=1,",
        "header:,X-A=1",
        "a b",
        "-x",
    ],
)
def test_parse_middleware_spec_rejects(value):
    with pytest.raises(UsageError, match="NAME\\[:KEY=VALUE"):
        parse_middleware_spec(value)


@given(st.text())
def test_parse_middleware_spec_only_ever_raises_usage_error(value):
    try:
        name, options = parse_middleware_spec(value)
    except UsageError:
        return
    assert name and ":" not in name
    assert all(key and "=" not in key for key in options)


@given(
    name=st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
    options=st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_characters=","), max_size=10),
        max_size=4,
    ),
)
def test_parse_middleware_spec_round_trips(name, options):
    text = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    assert parse_middleware_spec(text) == (name, options)


# --- registry and wrapping ---------------------------------------------------------------------


def test_own_entry_point_header_is_available():
    assert available_middlewares()["header"] is header_middleware


def test_registered_middleware_is_available_and_wins_over_entry_point():
    register_middleware("tag", tag_factory)
    register_middleware("header", tag_factory)
    available = available_middlewares()
    assert available["tag"] is tag_factory
    assert available["header"] is tag_factory


def test_register_rejects_bad_name():
    with pytest.raises(ValueError):
        register_middleware("bad name", tag_factory)


@respx.mock(using="httpcore")
def test_first_spec_is_outermost(respx_mock):
    route = respx_mock.get("http://r.example/").respond(200)
    register_middleware("tag", tag_factory)
    transport = apply_plugins(
        httpx.HTTPTransport(), [("tag", {"label": "first"}), ("tag", {"label": "second"})]
    )
    assert isinstance(transport, Tag) and transport.label == "first"
    with httpx.Client(transport=transport) as client:
        client.get("http://r.example/")
    assert route.calls.last.request.headers["X-Order"] == "first,second"


def test_no_specs_returns_transport_unchanged():
    transport = httpx.HTTPTransport()
    assert apply_plugins(transport, []) is transport


def test_unknown_name_lists_available_ones():
    register_middleware("tag", tag_factory)
    with pytest.raises(UsageError) as info:
        apply_plugins(httpx.HTTPTransport(), [("nope", {})])
    message = str(info.value)
    assert message.startswith("unknown middleware 'nope'; available: ")
    assert "header" in message and "tag" in message


def test_factory_raising_is_a_usage_error():
    def broken(next_transport, options):
        raise RuntimeError("no licence key")

    register_middleware("broken", broken)
    with pytest.raises(UsageError, match="middleware 'broken' failed to start: no licence key"):
        apply_plugins(httpx.HTTPTransport(), [("broken", {})])


def test_factory_returning_non_transport_is_a_usage_error():
    register_middleware("silly", lambda next_transport, options: "not a transport")
    with pytest.raises(UsageError, match="'silly' returned str"):
        apply_plugins(httpx.HTTPTransport(), [("silly", {})])


def test_entry_point_that_fails_to_import_is_reported_only_by_name(monkeypatch):
    monkeypatch.setattr(
        entrypoints,
        "_loaded",
        {
            plugins.ENTRY_POINT_GROUP: entrypoints.PluginGroup(
                {"header": header_middleware},
                {"ghost": "ImportError: no module x"},
            ),
            plugins.AUTOMATIC_GROUP: entrypoints.PluginGroup(),
        },
    )
    assert "ghost" not in available_middlewares()
    apply_plugins(httpx.HTTPTransport(), [("header", {"X-A": "1"})])
    with pytest.raises(UsageError, match="'ghost' could not be loaded: ImportError: no module x"):
        apply_plugins(httpx.HTTPTransport(), [("ghost", {})])


# --- header plug-in ----------------------------------------------------------------------------


@respx.mock(using="httpcore")
def test_header_plugin_adds_headers(respx_mock):
    route = respx_mock.get("http://r.example/v2/").respond(200)
    specs = [parse_middleware_spec("header:X-Pull-Through=yes,X-Team=a=b")]
    with httpx.Client(transport=apply_plugins(httpx.HTTPTransport(), specs)) as client:
        client.get("http://r.example/v2/")
    sent = route.calls.last.request.headers
    assert sent["X-Pull-Through"] == "yes"
    assert sent["X-Team"] == "a=b"


def test_header_plugin_needs_options():
    with pytest.raises(ValueError, match="header needs NAME=VALUE"):
        header_middleware(httpx.HTTPTransport(), {})
    with pytest.raises(UsageError, match="'header' failed to start: header needs NAME=VALUE"):
        apply_plugins(httpx.HTTPTransport(), [("header", {})])


@pytest.mark.parametrize("name", ["X Bad", "X:Bad", "X(", "Ä", ""])
def test_header_plugin_rejects_bad_names(name):
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        header_middleware(httpx.HTTPTransport(), {name: "v"})


def test_header_plugin_rejects_line_breaks_in_values():
    with pytest.raises(ValueError, match="line break"):
        header_middleware(httpx.HTTPTransport(), {"X-A": "a\r\nInjected: yes"})


def test_header_plugin_builds_header_middleware():
    assert isinstance(header_middleware(httpx.HTTPTransport(), {"X-A": "1"}), HeaderMiddleware)


# --- discovery of a real installed distribution ------------------------------------------------

_DISCOVERY_SCRIPT = textwrap.dedent(
    """
    import http.server, sys, threading
    import httpx
    from occystrap.middleware.plugins import apply_plugins, available_middlewares
    from occystrap.middleware.plugins import parse_middleware_spec

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (self.headers.get("X-Occystrap-Stamp") or "missing").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    available = available_middlewares()
    assert "stamp" in available and "header" in available, sorted(available)
    transport = apply_plugins(httpx.HTTPTransport(), [parse_middleware_spec("stamp:value=hi")])
    with httpx.Client(transport=transport) as client:
        print(client.get(f"http://127.0.0.1:{server.server_address[1]}/").text)
    server.shutdown()
    """
)


def test_entry_point_of_installed_distribution_is_discovered(tmp_path):
    target = install_test_plugin(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", _DISCOVERY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{target}:{REPO_ROOT}", "PATH": "/usr/bin:/bin", "NO_PROXY": "*"},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hi"


# --- endpoint plug-ins, installed ---------------------------------------------------------


def test_endpoint_entry_point_of_installed_distribution_works_beside_a_broken_one(tmp_path):
    from tests.unit.image_builder import make_image, save_tar

    site = install_test_plugin(tmp_path)
    image = make_image(tmp_path, [{"a.txt": b"a"}, {"b.txt": b"b"}])
    source, summary = tmp_path / "in.tar", tmp_path / "summary.txt"
    save_tar(image, source)

    def occystrap(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "occystrap", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": f"{site}:{REPO_ROOT}", "PATH": "/usr/bin:/bin", "NO_PROXY": "*"},
            cwd=tmp_path,
        )

    copied = occystrap("process", f"tar://{source}", f"summary://{summary}")
    assert copied.returncode == 0, copied.stderr
    assert summary.read_text() == f"{image.config_digest} 2\n"
    listed = occystrap("process", "--help")
    assert listed.returncode == 0, listed.stderr
    assert "summary://PATH" in listed.stdout and "tar://PATH" in listed.stdout
    broken = occystrap("process", f"tar://{source}", "broken://anywhere")
    assert broken.returncode != 0
    assert broken.stderr.strip().splitlines() == [
        "occystrap: error: URI scheme 'broken' could not be loaded: ImportError:"
        " occystrap-test-plugin's broken scheme needs the missing_sdk package"
        " (in 'broken://anywhere')"
    ]
    as_source = occystrap("info", f"summary://{summary}")
    assert as_source.returncode != 0
    assert (
        as_source.stderr.strip()
        .splitlines()[0]
        .startswith(f"occystrap: error: summary://{summary} cannot be a source")
    )


# --- the entry-point lookup itself ---------------------------------------------------------------

_COMPARE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from importlib import metadata
    from occystrap.entrypoints import entry_points
    sys.path[:0] = json.loads(sys.argv[1])
    groups = ("occystrap.middleware", "occystrap.middleware.automatic", "occystrap.filters",
              "occystrap.endpoints", "console_scripts")
    for group in groups:
        ours = entry_points(group)
        theirs = [(entry.name, entry.value) for entry in metadata.entry_points(group=group)]
        print(json.dumps([group, sorted(ours), sorted(theirs)]))
    """
)


def _compare_lookups(tmp_path, extra_path: list[str]) -> list[list]:
    run = subprocess.run(
        [sys.executable, "-c", _COMPARE_SCRIPT, json.dumps(extra_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_entry_points_are_found_as_importlib_metadata_finds_them(tmp_path):
    """The start-up's own lookup (occystrap/entrypoints.py) against importlib.metadata: an
    installed plug-in, and a second copy of it later on the path, which the first shadows."""
    first = install_test_plugin(tmp_path / "first")
    shadowed = tmp_path / "shadowed"
    shutil.copytree(first, shadowed)
    entry_file = next(shadowed.glob("*.dist-info")) / "entry_points.txt"
    entry_file.write_text(entry_file.read_text() + "\n[occystrap.filters]\nextra = nowhere:X\n")
    compared = _compare_lookups(tmp_path, [str(first), str(shadowed)])
    assert len(compared) == 5
    for group, ours, theirs in compared:
        assert ours == theirs, group
    by_group = {group: ours for group, ours, _ in compared}
    assert ["stamp", "occystrap_test_plugin:stamp_middleware"] in by_group["occystrap.middleware"]
    assert ["extra", "nowhere:X"] not in by_group["occystrap.filters"]


def test_a_zip_on_the_path_is_looked_up_by_importlib_metadata(tmp_path):
    plugin = install_test_plugin(tmp_path)
    archive = tmp_path / "plugin.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in plugin.rglob("*"):
            zipped.write(path, path.relative_to(plugin).as_posix())
    for group, ours, theirs in _compare_lookups(tmp_path, [str(archive)]):
        assert ours == theirs, group
        if group == "occystrap.middleware":
            assert ["stamp", "occystrap_test_plugin:stamp_middleware"] in ours


def test_one_pass_over_the_distributions_answers_every_group(tmp_path, monkeypatch):
    """A run asks for several groups; each distribution's entry_points.txt is read once."""
    for name, section in (("first", "occystrap.filters"), ("second", "occystrap.middleware")):
        info = tmp_path / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "entry_points.txt").write_text(f"[{section}]\n{name} = {name}_module:thing\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    opened: list[str] = []

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.basename(os.path.dirname(path)))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(entrypoints, "open", counting_open, raising=False)
    assert entrypoints.entry_points("occystrap.filters") == [("first", "first_module:thing")]
    assert entrypoints.entry_points("occystrap.middleware") == [("second", "second_module:thing")]
    assert entrypoints.entry_points("occystrap.endpoints") == []
    assert sorted(opened) == ["first-1.0.dist-info", "second-1.0.dist-info"]
