"""docker:// URIs, how the daemon's socket is found, and the one-line errors for sockets that
are missing, dead, or not a Docker Engine API (real Unix sockets, served in-process)."""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.daemon.client import Daemon, load_error
from occystrap.daemon.sockets import (
    DOCKER_SOCKET,
    PODMAN_ROOT_SOCKET,
    DaemonSocket,
    default_sockets,
    find_socket,
)
from occystrap.endpoints import parse_uri
from occystrap.endpoints.docker import DockerURI
from occystrap.errors import OccystrapError, UsageError

from .image_builder import context


@pytest.mark.parametrize(
    ("uri", "name", "socket_path"),
    [
        ("docker://busybox", "busybox:latest", None),
        ("docker://busybox:1.36", "busybox:1.36", None),
        ("docker://team/app:v1?socket=/run/d.sock", "team/app:v1", "/run/d.sock"),
        ("docker://localhost:5000/app", "localhost:5000/app:latest", None),
        ("docker://r.example:5000/a/b:c", "r.example:5000/a/b:c", None),
    ],
)
def test_docker_uris(uri, name, socket_path):
    assert parse_uri(uri) == DockerURI(name, socket_path)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("docker://", "no image name"),
        ("docker://?socket=/s", "no image name"),
        ("docker://Busybox", "invalid image name 'Busybox'"),
        ("docker://a:b:c", "invalid image name"),
        ("docker://busybox@sha256:" + "a" * 64, "names a digest"),
        ("docker://busybox?sock=/s", "unknown option 'sock'"),
        ("docker://busybox?socket=", "has no value"),
    ],
)
def test_bad_docker_uris_are_one_line_usage_errors(uri, message):
    with pytest.raises(UsageError, match=message) as error:
        parse_uri(uri)
    assert "\n" not in str(error.value)


def test_socket_option_wins_over_docker_host(tmp_path):
    found = find_socket("/x/d.sock", {"DOCKER_HOST": "unix:///y/d.sock"}, [])
    assert found == DaemonSocket(Path("/x/d.sock"), "?socket=")


def test_docker_host_is_used_when_no_option():
    found = find_socket(None, {"DOCKER_HOST": "unix:///y/d.sock"}, [])
    assert found == DaemonSocket(Path("/y/d.sock"), "DOCKER_HOST")


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:2375", "ssh://me@host", "unix://", "/a.sock"])
def test_docker_host_that_is_not_a_unix_socket_is_refused(host):
    with pytest.raises(UsageError, match="is not a Unix socket.*unix://PATH"):
        find_socket(None, {"DOCKER_HOST": host}, [])


def test_defaults_are_docker_then_podman_for_root_then_the_user():
    assert default_sockets({"XDG_RUNTIME_DIR": "/run/user/1000"}) == [
        DOCKER_SOCKET,
        PODMAN_ROOT_SOCKET,
        Path("/run/user/1000/podman/podman.sock"),
    ]
    assert default_sockets({}) == [DOCKER_SOCKET, PODMAN_ROOT_SOCKET]


def test_podman_socket_is_used_when_dockers_is_absent(tmp_path):
    docker, podman = tmp_path / "docker.sock", tmp_path / "podman.sock"
    podman.touch()
    assert find_socket(None, {}, [docker, podman]) == DaemonSocket(podman, "the default")
    docker.touch()
    assert find_socket(None, {}, [docker, podman]).path == docker


def test_no_socket_anywhere_names_every_place_tried(tmp_path):
    places = [tmp_path / "a.sock", tmp_path / "b.sock"]
    with pytest.raises(OccystrapError, match="a.sock, .*b.sock.*DOCKER_HOST=unix://PATH"):
        find_socket(None, {}, places)


# -- talking to sockets that are not (working) daemons --------------------------------------


def _check(path: Path, origin: str = "?socket=") -> str:
    with pytest.raises(OccystrapError) as error, Daemon(DaemonSocket(path, origin)).session():
        pass
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_socket(tmp_path):
    assert "no daemon socket at" in _check(tmp_path / "none.sock")


def test_socket_nobody_listens_on(tmp_path):
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))  # bound, never listening: connections are refused
        assert "nothing answers on" in _check(path, "DOCKER_HOST")
        assert "(from DOCKER_HOST)" in _check(path, "DOCKER_HOST")


def test_regular_file_instead_of_a_socket(tmp_path):
    path = tmp_path / "file.sock"
    path.write_text("not a socket")
    assert "nothing answers on" in _check(path)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextmanager
def serving(path: Path, handler: type[socketserver.BaseRequestHandler]) -> Iterator[None]:
    server = _UnixHTTPServer(str(path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class _PlainWebServer(http.server.BaseHTTPRequestHandler):
    """Some other HTTP service: answers, but not as Docker does."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/_ping" else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


class _NotHTTP(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1024)
        self.request.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00 not http at all\r\n\r\n")


class _FailingDaemon(_PlainWebServer):
    """Answers /_ping as a daemon does, then fails every request with a JSON message."""

    def do_GET(self) -> None:
        if self.path == "/_ping":
            self.send_response(200)
            self.send_header("Api-Version", "1.41")
            body = b"OK"
        else:
            self.send_response(500)
            body = json.dumps({"message": "disk on fire\nsecond line"}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_daemon_error_message_is_one_line(tmp_path):
    path = tmp_path / "failing.sock"
    with serving(path, _FailingDaemon):
        source = DockerURI("team/app:v1", str(path)).open_input(context(tmp_path / "work"))
        with pytest.raises(OccystrapError) as error:
            source.read()
    assert str(error.value) == (
        f"the daemon at {path} failed to describe team/app:v1: disk on fire second line"
    )


def test_http_service_that_is_not_docker(tmp_path):
    path = tmp_path / "web.sock"
    with serving(path, _PlainWebServer):
        message = _check(path)
    assert "is not a Docker Engine API socket" in message
    assert "without an Api-Version header" in message


def test_service_that_does_not_speak_http(tmp_path):
    path = tmp_path / "grpc.sock"
    with serving(path, _NotHTTP):
        message = _check(path)
    assert "is not a Docker Engine API socket (it does not answer HTTP" in message


# -- the load's response: JSON lines ---------------------------------------------------------

_PROGRESS = st.one_of(
    st.builds(lambda n: json.dumps({"stream": f"Loaded image: a/b:{n}\n"}), st.integers(0, 9)),
    st.builds(
        lambda n: json.dumps({"status": "Loading layer", "progressDetail": {"current": n}}),
        st.integers(0, 1 << 40),
    ),
    st.just(""),
    st.text(alphabet='{}[]"abc :,', max_size=20),  # not JSON, or not an object: ignored
)


@given(st.lists(_PROGRESS, max_size=20))
def test_a_load_without_an_error_line_succeeds(lines):
    assert load_error(lines) is None


@given(
    st.lists(_PROGRESS, max_size=10),
    st.lists(_PROGRESS, max_size=10),
    st.sampled_from(["error", "errorDetail", "both"]),
    st.text(min_size=1, alphabet=st.characters(blacklist_categories=["Cs"])).filter(str.split),
)
def test_an_error_line_anywhere_is_the_error_on_one_line(before, after, shape, text):
    error = {"error": text} if shape == "error" else {"errorDetail": {"message": text}}
    if shape == "both":
        error = {"error": text, "errorDetail": {"message": "other"}}
    assert load_error([*before, json.dumps(error), *after]) == " ".join(text.split())
