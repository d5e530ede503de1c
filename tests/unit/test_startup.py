"""Start-up loads only what the command needs: `--version` and `--help` never import the HTTP
stack or rich, a run off a terminal never imports rich, and the registry commands that ask one
question (digest, tags...) load the chain and the registry client, not the copy pipeline
(docs/performance.md, "Start-up").

Each case runs the real program in a fresh interpreter, whose module table is the evidence.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from occystrap import __version__
from tests.unit.image_builder import make_image, save_tar

REPO_ROOT = Path(__file__).resolve().parents[2]
# This checkout's package and its cloud plug-ins (installed ones may be another checkout's):
# the plug-ins' automatic middlewares join every chain, so their imports count too.
SOURCE_PATH = ":".join(
    [str(REPO_ROOT), *(str(path) for path in sorted((REPO_ROOT / "plugins").iterdir()))]
)
# Runs the command line as the installed script does, then prints every module it loaded
# (None entries are imports the command line blocks on purpose).
PROBE = """
import json, sys
from occystrap.cli import main
try:
    main()
except SystemExit:
    pass
loaded = [name for name, module in sys.modules.items() if module is not None]
sys.stdout.write("\\n" + json.dumps(sorted(loaded)))
"""
# The same for the program as `python -m occystrap` (and the installed script) runs it.
PROGRAM_PROBE = PROBE.replace(
    "from occystrap.cli import main\n", "from occystrap.__main__ import main\n"
)
HTTP_STACK = ("httpx", "httpcore", "h2", "ssl", "trio", "anyio")


def run_python(probe: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`probe` run by a fresh interpreter with `args`, in a bare environment."""
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": SOURCE_PATH, "TERM": "dumb"},
        timeout=60,
        check=True,
    )


def run_probe(probe: str, *args: str) -> tuple[str, set[str]]:
    """What the command printed on stdout, and every module it loaded."""
    printed, _, modules = run_python(probe, *args).stdout.rpartition("\n")
    return printed, set(json.loads(modules))


def loaded_modules(*args: str) -> set[str]:
    return run_probe(PROBE, *args)[1]


def top_level(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("tags", "--help")])
def test_version_and_help_load_neither_the_http_stack_nor_rich(args):
    loaded = top_level(loaded_modules(*args))
    assert "click" in loaded  # the probe really ran the command line
    assert loaded & {*HTTP_STACK, "rich", "pygments"} == set()


def test_the_program_answers_version_without_the_command_line():
    printed, loaded = run_probe(PROGRAM_PROBE, "--version")
    assert "occystrap.__main__" in loaded  # the probe really ran the program
    assert top_level(loaded) & {"click", *HTTP_STACK, "rich"} == set()
    assert "occystrap.cli" not in loaded
    # ... and says what the command line's own --version says.
    assert printed == run_probe(PROBE, "--version")[0] == f"occystrap, version {__version__}\n"


def test_the_program_runs_the_command_line_for_anything_else():
    printed, loaded = run_probe(PROGRAM_PROBE, "--version", "--help")
    assert "occystrap.cli" in loaded
    assert printed.startswith("occystrap, version ")


def test_the_program_leaves_what_it_made_to_the_exit_not_to_the_collector():
    """The collector's passes at interpreter exit would walk every object the run made
    (__main__.py freezes them); atexit handlers still run, after the freeze."""
    probe = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'frozen {gc.get_freeze_count()}'))\n"
        "from occystrap.__main__ import main\n"
        "main()\n"
    )
    completed = run_python(probe, "tags", "--help")
    assert completed.stdout.startswith("Usage: ")  # the command line really ran
    frozen = completed.stderr.rpartition("frozen ")[2]
    assert int(frozen) > 10_000  # click, the command line and the rest of start-up


def test_version_loads_no_configuration_parser():
    loaded = loaded_modules("--version")
    assert "occystrap.cli" in loaded  # the probe really ran the command line
    parsers = {"occystrap.config_file", "occystrap.registries_conf", "occystrap.tomlfile"}
    assert loaded & {*parsers, "tomllib"} == set()


@pytest.mark.parametrize("destination", ["tar://{tmp}/out.tar", "dir://{tmp}/out"])
def test_a_file_to_file_copy_off_a_terminal_loads_neither_rich_nor_the_http_stack(
    tmp_path, destination
):
    source = tmp_path / "in.tar"
    save_tar(make_image(tmp_path, [{"hello.txt": b"hello\n"}]), source)
    loaded = top_level(
        loaded_modules("process", f"tar://{source}", destination.format(tmp=tmp_path))
    )
    assert (tmp_path / "out.tar").exists() or (tmp_path / "out").is_dir()
    assert "occystrap" in loaded
    assert loaded & {"rich", "pygments", *HTTP_STACK} == set()


# A registry on loopback with one image, bench:src (a config and one layer), answering what
# the read-only commands ask: the API root, manifests, blobs, tags and the catalog.
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": []}}).encode()
LAYER = b"read only by the copy"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(LAYER),
                "size": len(LAYER),
            }
        ],
    }
).encode()
ROUTES = {
    "/v2/": (b"{}", "application/json"),
    "/v2/bench/manifests/src": (MANIFEST, "application/vnd.oci.image.manifest.v1+json"),
    f"/v2/bench/manifests/{_digest(MANIFEST)}": (
        MANIFEST,
        "application/vnd.oci.image.manifest.v1+json",
    ),
    f"/v2/bench/blobs/{_digest(CONFIG)}": (CONFIG, "application/octet-stream"),
    f"/v2/bench/blobs/{_digest(LAYER)}": (LAYER, "application/octet-stream"),
    "/v2/bench/tags/list": (b'{"name": "bench", "tags": ["src"]}', "application/json"),
    "/v2/_catalog": (b'{"repositories": ["bench"]}', "application/json"),
}


class _Registry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        body, media_type = ROUTES.get(self.path.partition("?")[0], (b"", ""))
        self.send_response(200 if media_type else 404)
        self.send_header("Content-Length", str(len(body)))
        if media_type:
            self.send_header("Content-Type", media_type)
            self.send_header("Docker-Content-Digest", _digest(body))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# What a copy needs and a question to a registry does not: the pipeline and what it brings
# (the blob cache, layer extraction), the layout and archive code, other schemes' modules.
COPY_MACHINERY = {
    "occystrap.pipeline",
    "occystrap.blobcache",
    "occystrap.extract",
    "occystrap.ocilayout",
    "occystrap.archive",
    "occystrap.dockersave",
    "occystrap.stores",
    "occystrap.endpoints.registry_images",
    "occystrap.endpoints.tar",
    "occystrap.endpoints.dir",
    "occystrap.endpoints.oci_layout",
    "occystrap.endpoints.docker",
}
# The image model besides: `digest` and `tags` read no manifest into images, so neither the
# manifest parser nor the compression engines (isal, and the thread pools of compression.py).
IMAGE_MODEL = {
    "occystrap.graph",
    "occystrap.image",
    "occystrap.registry.store",
    "occystrap.manifest",
    "occystrap.compression",
    "isal",
    "concurrent.futures",
}


@pytest.mark.parametrize(
    ("args", "not_needed"),
    [
        (("digest", "registry://{host}/bench:src"), COPY_MACHINERY | IMAGE_MODEL),
        (("tags", "registry://{host}/bench"), COPY_MACHINERY | IMAGE_MODEL),
        (("catalog", "registry://{host}"), COPY_MACHINERY | IMAGE_MODEL),
        (
            ("manifest", "registry://{host}/bench:src"),
            COPY_MACHINERY - {"occystrap.endpoints.registry_images"},
        ),
        (
            ("config", "registry://{host}/bench:src"),
            COPY_MACHINERY - {"occystrap.endpoints.registry_images"},
        ),
    ],
)
def test_a_question_to_a_registry_loads_no_copy_machinery(registry, args, not_needed):
    command, uri = args
    loaded = loaded_modules("--insecure", command, uri.format(host=registry))
    assert "occystrap.registry.client" in loaded  # the command really asked the registry
    assert loaded & not_needed == set()
    # Plain HTTP never negotiates HTTP/2, so its code (h2, hpack) stays out.
    assert top_level(loaded) & {"h2", "hpack"} == set()
    # The automatic middlewares are looked up without importlib.metadata (entrypoints.py), and
    # the s3 one parses no XML until it is used; credential files are read, not written.
    assert loaded & {"importlib.metadata", "zipfile", "xml.etree.ElementTree"} == set()
    assert "occystrap.atomic" not in loaded
    # Middlewares the run does not ask for (--rate-limit, the ratelimit command's quota).
    assert loaded & {"occystrap.middleware.ratelimit", "occystrap.middleware.quota"} == set()


def test_a_copy_without_filters_loads_no_filter_code(registry, tmp_path):
    """-f parsing, the filter plug-in scan and `search`'s tar reading load only when asked."""
    layout = tmp_path / "layout"
    loaded = loaded_modules(
        "--insecure", "process", f"registry://{registry}/bench:src", f"oci-layout://{layout}"
    )
    assert (layout / "index.json").is_file()  # the copy really ran
    assert not {name for name in loaded if name.split(".")[:2] == ["occystrap", "filters"]}
    assert "occystrap.extract" not in loaded


# Runs the command line recording the source of every pattern re compiles, then prints them.
COMPILED_PROBE = """
import json, re, sys
compiled = []
compile_pattern = re._compile


def recording(pattern, flags):
    compiled.append(str(getattr(pattern, "pattern", pattern)))
    return compile_pattern(pattern, flags)


re._compile = recording
from occystrap.cli import main
try:
    main()
except SystemExit:
    pass
sys.stdout.write("\\n" + json.dumps(compiled))
"""


def test_a_question_to_a_registry_compiles_no_pattern_of_what_it_was_not_given(registry, tmp_path):
    """--mirror values and [[registry]] entries are checked by patterns compiled when one is
    parsed (case-insensitive host patterns are slow to compile), not at every start-up."""
    from occystrap import registries_conf
    from occystrap.middleware import mirror

    conf = tmp_path / "registries.conf"  # without [[registry]] entries, whatever the host has
    conf.write_text('unqualified-search-registries = ["docker.io"]\n')
    completed = run_python(
        COMPILED_PROBE,
        "--insecure",
        "--registries-conf",
        str(conf),
        "digest",
        f"registry://{registry}/bench:src",
    )
    printed, _, patterns = completed.stdout.rpartition("\n")
    assert printed.startswith("sha256:")  # the command really ran
    unused = {
        mirror._SOURCE_PATTERN,
        mirror._MIRROR_URL_PATTERN,
        registries_conf._LOCATION,
        registries_conf._WILDCARD_PREFIX,
    }
    assert set(json.loads(patterns)) & unused == set()


# Runs the program and says, at exit, whether the garbage collector was on, and how many
# objects were frozen when the command line turned it on.
COLLECTOR_PROBE = """
import atexit, gc, sys
frozen_at_enable = []
enable = gc.enable
gc.enable = lambda: (frozen_at_enable.append(gc.get_freeze_count()), enable())
atexit.register(
    lambda: sys.stderr.write(f"collector on: {gc.isenabled()} {frozen_at_enable}")
)
from occystrap.__main__ import main
main()
"""


def collector_at_exit(stderr: str) -> tuple[bool, list[int]]:
    on, _, frozen = stderr.rpartition("collector on: ")[2].partition(" ")
    return on == "True", json.loads(frozen)


def test_a_question_runs_with_the_collector_on_over_frozen_start_up(registry):
    """Start-up objects live as long as the process: frozen before the command runs, the
    collector's passes skip them, and a long tag or catalog listing still has its garbage
    collected (__main__.py starts without the collector, cli.main freezes and enables)."""
    completed = run_python(
        COLLECTOR_PROBE, "--insecure", "digest", f"registry://{registry}/bench:src"
    )
    assert completed.stdout.startswith("sha256:")  # the command really ran
    on, frozen = collector_at_exit(completed.stderr)
    assert on
    assert len(frozen) == 1 and frozen[0] > 10_000  # click, the command line, httpx


def test_the_program_copies_with_the_collector_on(tmp_path):
    source = tmp_path / "in.tar"
    save_tar(make_image(tmp_path, [{"hello.txt": b"hello\n"}]), source)
    completed = run_python(COLLECTOR_PROBE, "process", f"tar://{source}", f"dir://{tmp_path}/out")
    assert (tmp_path / "out").is_dir()  # the copy really ran
    assert collector_at_exit(completed.stderr)[0]
