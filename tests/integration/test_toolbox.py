"""tags, digest, manifest, config, delete, login/logout and info -O json against the real
registry (plain, htpasswd Basic, token auth, TLS), with skopeo as the independent client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pty
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, registry_flags, run_occystrap
from tests.integration.fault_proxy import FaultProxy, ForwardingServer
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_inspect,
)
from tests.integration.servers import SKOPEO_BINARY
from tests.integration.tag_pages import TagPagingProxy

pytestmark = pytest.mark.integration

EVERY_REGISTRY = ["registry_plain", "registry_basic", "registry_token", "registry_tls"]
INSPECT_KEYS = ("Name", "Digest", "RepoTags", "Created", "Architecture", "Os", "Layers", "Env")


@pytest.fixture
def no_saved_credentials(tmp_path) -> dict[str, str]:
    """Environment in which occystrap finds no credentials of the machine: every place of the
    auth-file search list points into an empty directory."""
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    return {
        "DOCKER_CONFIG": str(empty),
        "XDG_RUNTIME_DIR": str(empty),
        "XDG_CONFIG_HOME": str(empty),
        "HOME": str(empty),
        "REGISTRY_AUTH_FILE": "",
    }


def _push(registry, repo: str, tmp_path: Path, tags: tuple[str, ...] = ("v1",)) -> None:
    """A generated single-platform image at each of `tags`, pushed by skopeo."""
    layout = tmp_path / f"layout-{repo.replace('/', '-')}"
    build_oci_layout(layout, [random_layer(20_000, 7), {"etc/motd": b"hi\n"}])
    for tag in tags:
        push_with_skopeo(layout, registry, repo, tag)


def _push_multiarch(registry, repo: str, tmp_path: Path) -> None:
    layout = tmp_path / "multiarch"
    build_multiarch_layout(
        layout,
        {
            ("linux", "amd64"): [{"amd64.txt": b"amd64\n"}],
            ("linux", "arm64"): [{"arm64.txt": b"arm64\n"}],
        },
    )
    push_multiarch_with_skopeo(layout, registry, repo, "v1")


@contextlib.contextmanager
def _refusing_port():
    """A loopback port bound but not listening: connections are refused, and no other process
    can start a server on it while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def _uri(registry, ref: str) -> str:
    return f"registry://{registry.host}/{ref}"


def _skopeo(*args: str) -> subprocess.CompletedProcess:
    """skopeo that may fail (the caller looks at the result)."""
    return subprocess.run(
        [SKOPEO_BINARY, *args], capture_output=True, text=True, timeout=120, check=False
    )


# -- tags ---------------------------------------------------------------------------------


def test_tags_follow_link_pages_of_n(registry_plain, unique_repo, tmp_path):
    tags = tuple(f"t{number:02d}" for number in range(7))
    _push(registry_plain, unique_repo, tmp_path, tags)
    with TagPagingProxy(registry_plain.url, default_page_size=3) as proxy:
        uri = f"registry://{proxy.host}/{unique_repo}"
        paged = run_occystrap("--insecure", "tags", "--page-size", "2", uri)
        assert paged.stdout.splitlines() == list(tags)
        requests = proxy.requests_matching("/tags/list")
        assert [r.path.partition("?")[2] for r in requests] == [
            "n=2",
            "last=t01&n=2",
            "last=t03&n=2",
            "last=t05&n=2",
        ]
        proxy.reset()
        as_json = run_occystrap("--insecure", "-O", "json", "tags", uri)
        assert json.loads(as_json.stdout) == list(tags)
        assert len(proxy.requests_matching("/tags/list")) == 3  # the server's own page size
        listed = run_skopeo(
            "list-tags", "--tls-verify=false", f"docker://{proxy.host}/{unique_repo}"
        )
    assert json.loads(listed.stdout)["Tags"] == list(tags)


@pytest.mark.parametrize("fixture", EVERY_REGISTRY)
def test_tags_equal_skopeo_list_tags(fixture, request, unique_repo, tmp_path):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path, ("v1", "v2", "latest"))
    result = run_occystrap(*registry_flags(registry), "tags", _uri(registry, unique_repo))
    listed = run_skopeo(
        "list-tags", *registry.skopeo_args(), f"docker://{registry.host}/{unique_repo}"
    )
    assert result.stdout.splitlines() == json.loads(listed.stdout)["Tags"]
    assert sorted(result.stdout.splitlines()) == ["latest", "v1", "v2"]


def test_tags_refuses_an_image_reference(registry_plain):
    result = run_occystrap("--insecure", "tags", _uri(registry_plain, "a/b:v1"), check=False)
    assert_one_line_error(result, "names an image, not a repository")


# -- digest, manifest, config -------------------------------------------------------------


@pytest.mark.parametrize("fixture", EVERY_REGISTRY)
def test_digest_equals_skopeo_inspect(fixture, request, unique_repo, tmp_path):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path)
    result = run_occystrap(*registry_flags(registry), "digest", _uri(registry, f"{unique_repo}:v1"))
    inspected = run_skopeo(
        "inspect",
        "--format",
        "{{.Digest}}",
        *registry.skopeo_args(),
        f"docker://{registry.host}/{unique_repo}:v1",
    )
    assert result.stdout == inspected.stdout
    assert result.stdout.startswith("sha256:")


def test_digest_is_the_digest_of_the_bytes_not_of_a_header(registry_plain, unique_repo, tmp_path):
    """A registry (or proxy) whose Docker-Content-Digest lies: `digest` prints the digest of
    the manifest it serves, as skopeo does."""
    _push(registry_plain, unique_repo, tmp_path)
    raw = run_occystrap(
        "--insecure", "manifest", _uri(registry_plain, f"{unique_repo}:v1")
    ).stdout.encode()
    lying = {"Docker-Content-Digest": "sha256:" + "0" * 64}
    with FaultProxy(registry_plain.url) as proxy:
        proxy.answer_next(5, raw, path=r"/manifests/v1", headers=lying)
        shown = run_occystrap("--insecure", "digest", f"registry://{proxy.host}/{unique_repo}:v1")
    assert shown.stdout.strip() == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_a_bare_host_repo_tag_is_a_registry_image(registry_plain, unique_repo, tmp_path):
    """As crane and regctl take it: HOST/NAME[:TAG] wherever a registry image is meant."""
    _push(registry_plain, unique_repo, tmp_path)
    bare = f"{registry_plain.host}/{unique_repo}"
    expected = skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]
    assert run_occystrap("--insecure", "digest", f"{bare}:v1").stdout.strip() == expected
    assert run_occystrap("--insecure", "tags", bare).stdout.split() == ["v1"]
    shown = json.loads(run_occystrap("--insecure", "-O", "json", "info", f"{bare}:v1").stdout)
    assert shown["manifest_digest"] == expected
    out = tmp_path / "bare.tar"
    copied = run_occystrap("--insecure", "process", f"{bare}:v1", f"tar://{out}")
    assert out.exists() and f"registry://{bare}:v1 -> " in copied.stderr
    wrong = run_occystrap("--insecure", "tags", f"{bare}:v1", check=False)
    assert_one_line_error(wrong, "names an image, not a repository")


def test_digest_of_an_index_and_of_one_platform(registry_plain, unique_repo, tmp_path):
    _push_multiarch(registry_plain, unique_repo, tmp_path)
    uri = _uri(registry_plain, f"{unique_repo}:v1")
    index_digest = run_occystrap("--insecure", "digest", uri).stdout.strip()
    assert index_digest == skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]
    raw_index = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    by_arch = {
        entry["platform"]["architecture"]: entry["digest"] for entry in raw_index["manifests"]
    }
    arm64 = run_occystrap("--insecure", "digest", "--platform", "linux/arm64", uri)
    assert arm64.stdout.strip() == by_arch["arm64"] != index_digest
    missing = run_occystrap("--insecure", "digest", "--platform", "linux/s390x", uri, check=False)
    assert_one_line_error(missing, "no linux/s390x image", "linux/amd64", "linux/arm64")


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_token"])
def test_manifest_and_config_bytes_equal_skopeo_raw(fixture, request, unique_repo, tmp_path):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path)
    flags, ref = registry_flags(registry), f"{unique_repo}:v1"
    target = f"docker://{registry.host}/{ref}"
    raw_manifest = subprocess.run(
        [SKOPEO_BINARY, "inspect", "--raw", *registry.skopeo_args(), target],
        capture_output=True,
        check=True,
    ).stdout
    raw_config = subprocess.run(
        [SKOPEO_BINARY, "inspect", "--raw", "--config", *registry.skopeo_args(), target],
        capture_output=True,
        check=True,
    ).stdout
    manifest = _bytes_of(*flags, "manifest", _uri(registry, ref))
    config = _bytes_of(*flags, "config", _uri(registry, ref))
    assert manifest == raw_manifest
    assert config == raw_config
    digest = run_occystrap(*flags, "digest", _uri(registry, ref)).stdout.strip()
    assert digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert (
        json.loads(manifest)["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    )


def _bytes_of(*args: str) -> bytes:
    """occystrap's stdout as bytes, untouched by text decoding."""
    result = subprocess.run(
        [sys.executable, "-m", "occystrap", *args],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_config_and_manifest_of_one_platform(registry_plain, unique_repo, tmp_path):
    _push_multiarch(registry_plain, unique_repo, tmp_path)
    uri = _uri(registry_plain, f"{unique_repo}:v1")
    arm64_config = json.loads(_bytes_of("--insecure", "config", "--platform", "linux/arm64", uri))
    assert arm64_config["architecture"] == "arm64"
    by_global_option = json.loads(_bytes_of("--insecure", "--architecture", "arm64", "config", uri))
    assert by_global_option == arm64_config
    default = json.loads(_bytes_of("--insecure", "config", uri))
    assert default["architecture"] == "amd64"
    arm64_manifest = _bytes_of("--insecure", "manifest", "--platform", "linux/arm64", uri)
    raw_index = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    by_arch = {
        entry["platform"]["architecture"]: entry["digest"] for entry in raw_index["manifests"]
    }
    assert "sha256:" + hashlib.sha256(arm64_manifest).hexdigest() == by_arch["arm64"]
    index = _bytes_of("--insecure", "manifest", uri)
    assert json.loads(index) == raw_index


# -- delete -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_basic", "registry_token"])
def test_delete_by_tag_then_404(fixture, request, unique_repo, tmp_path):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path)
    flags, uri = registry_flags(registry), _uri(registry, f"{unique_repo}:v1")
    digest = skopeo_inspect(registry, f"{unique_repo}:v1")["Digest"]
    deleted = run_occystrap(*flags, "delete", uri)
    assert digest in deleted.stderr
    gone = _skopeo(
        "inspect", *registry.skopeo_args(), f"docker://{registry.host}/{unique_repo}@{digest}"
    )
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr.lower()
    assert_one_line_error(run_occystrap(*flags, "digest", uri, check=False), "HTTP 404")
    again = run_occystrap(*flags, "delete", _uri(registry, f"{unique_repo}@{digest}"), check=False)
    assert_one_line_error(again, "HTTP 404")


def test_delete_by_digest_keeps_other_manifests(registry_plain, unique_repo, tmp_path):
    _push(registry_plain, unique_repo, tmp_path)
    _push_multiarch(registry_plain, f"{unique_repo}-multi", tmp_path)
    digest = skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]
    run_occystrap("--insecure", "delete", _uri(registry_plain, f"{unique_repo}@{digest}"))
    assert (
        _skopeo(
            "inspect", "--tls-verify=false", f"docker://{registry_plain.host}/{unique_repo}:v1"
        ).returncode
        != 0
    )
    assert skopeo_inspect(registry_plain, f"{unique_repo}-multi:v1")["Digest"].startswith("sha256:")


def test_delete_refused_by_the_registry_is_one_clear_line(
    registry_no_delete, unique_repo, tmp_path
):
    _push(registry_no_delete, unique_repo, tmp_path)
    result = run_occystrap(
        "--insecure", "delete", _uri(registry_no_delete, f"{unique_repo}:v1"), check=False
    )
    assert_one_line_error(result, "does not allow deleting manifests", "HTTP 405")
    assert skopeo_inspect(registry_no_delete, f"{unique_repo}:v1")["Digest"].startswith("sha256:")


# -- login / logout -----------------------------------------------------------------------


def _login_flags(registry) -> list[str]:
    return ["--insecure"] if registry.scheme == "http" else ["--ca-cert", str(registry.ca_cert)]


def _skopeo_tls(registry) -> list[str]:
    if registry.scheme == "http":
        return ["--tls-verify=false"]
    return [f"--cert-dir={registry.cert_dir}"]


@pytest.mark.parametrize("fixture", ["registry_basic", "registry_token"])
def test_login_writes_an_auth_file_skopeo_uses(
    fixture, request, unique_repo, tmp_path, no_saved_credentials
):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path)
    authfile = tmp_path / "auth" / "auth.json"
    result = run_occystrap(
        *_login_flags(registry),
        "--authfile",
        str(authfile),
        "login",
        registry.host,
        "-u",
        registry.username,
        "--password-stdin",
        input=registry.password + "\n",
        env=no_saved_credentials,
    )
    assert registry.password not in result.stdout + result.stderr
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    inspected = run_skopeo(
        "inspect",
        "--authfile",
        str(authfile),
        *_skopeo_tls(registry),
        f"docker://{registry.host}/{unique_repo}:v1",
    )
    assert json.loads(inspected.stdout)["Name"] == f"{registry.host}/{unique_repo}"


@pytest.mark.parametrize("form", ["login -p", "global --password"])
def test_login_takes_the_password_as_an_option(
    form, registry_basic, tmp_path, no_saved_credentials
):
    authfile = tmp_path / "auth.json"
    user, password = registry_basic.username, registry_basic.password
    if form == "login -p":
        words = ["login", registry_basic.host, "-u", user, "-p", password]
    else:  # `--password X login -u U` used to say "give both" when both were given
        words = ["--password", password, "login", "-u", user, registry_basic.host]
    result = run_occystrap(
        *_login_flags(registry_basic), "--authfile", str(authfile), *words,
        env=no_saved_credentials,
    )  # fmt: skip
    assert f"logged in to {registry_basic.host} as {user}" in result.stderr
    assert registry_basic.host in json.loads(authfile.read_text())["auths"]


def test_login_into_docker_config_keeps_other_entries_and_logout_removes_it(
    registry_basic, unique_repo, tmp_path, no_saved_credentials
):
    _push(registry_basic, unique_repo, tmp_path)
    config = Path(no_saved_credentials["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {"other.example": {"auth": "dTpw"}}, "psFormat": "x"}))
    run_occystrap(
        "--insecure",
        "login",
        registry_basic.host,
        "--username",
        registry_basic.username,
        input=registry_basic.password + "\n",  # not a terminal: one line of stdin
        env=no_saved_credentials,
    )
    written = json.loads(config.read_text())
    assert written["psFormat"] == "x"
    assert set(written["auths"]) == {"other.example", registry_basic.host}
    uri = _uri(registry_basic, f"{unique_repo}:v1")
    run_occystrap("--insecure", "digest", uri, env=no_saved_credentials)

    run_occystrap("--insecure", "logout", registry_basic.host, env=no_saved_credentials)
    assert set(json.loads(config.read_text())["auths"]) == {"other.example"}
    refused = run_occystrap("--insecure", "digest", uri, env=no_saved_credentials, check=False)
    assert_one_line_error(refused, "HTTP 401")


@pytest.mark.parametrize("fixture", ["registry_basic", "registry_token"])
def test_login_with_a_wrong_password_writes_nothing(
    fixture, request, tmp_path, no_saved_credentials
):
    registry = request.getfixturevalue(fixture)
    authfile = tmp_path / "auth.json"
    result = run_occystrap(
        "--insecure",
        "--authfile",
        str(authfile),
        "login",
        registry.host,
        "-u",
        registry.username,
        "--password-stdin",
        input="not-the-password",
        env=no_saved_credentials,
        check=False,
    )
    assert_one_line_error(result, f"login to {registry.host} as {registry.username} failed")
    assert "not-the-password" not in result.stderr
    assert not authfile.exists()


@pytest.mark.parametrize("fixture", ["registry_basic", "registry_token"])
def test_credentials_from_skopeo_login_are_used(
    fixture, request, unique_repo, tmp_path, no_saved_credentials
):
    registry = request.getfixturevalue(fixture)
    _push(registry, unique_repo, tmp_path)
    authfile = tmp_path / "skopeo-auth.json"
    run_skopeo(
        "login",
        "--authfile",
        str(authfile),
        "--tls-verify=false",
        "-u",
        registry.username,
        "-p",
        registry.password,
        registry.host,
    )
    uri = _uri(registry, f"{unique_repo}:v1")
    anonymous = run_occystrap("--insecure", "digest", uri, env=no_saved_credentials, check=False)
    assert_one_line_error(anonymous)
    found = run_occystrap(
        "--insecure", "--authfile", str(authfile), "digest", uri, env=no_saved_credentials
    )
    assert found.stdout.strip() == skopeo_inspect(registry, f"{unique_repo}:v1")["Digest"]
    run_occystrap("--insecure", "--authfile", str(authfile), "logout", registry.host)
    logged_out = _skopeo(
        "inspect",
        "--authfile",
        str(authfile),
        "--tls-verify=false",
        f"docker://{registry.host}/{unique_repo}:v1",
    )
    assert logged_out.returncode != 0


# -- info -O json speaks skopeo inspect ---------------------------------------------------


@pytest.mark.parametrize("multiarch", [False, True])
def test_info_json_carries_skopeo_inspect_keys(registry_token, unique_repo, tmp_path, multiarch):
    if multiarch:
        _push_multiarch(registry_token, unique_repo, tmp_path)
        push_tag = ("v1",)
    else:
        push_tag = ("v1", "v2")
        _push(registry_token, unique_repo, tmp_path, push_tag)
    result = run_occystrap(
        *registry_flags(registry_token),
        "-O",
        "json",
        "info",
        _uri(registry_token, f"{unique_repo}:v1"),
    )
    ours = json.loads(result.stdout)
    theirs = skopeo_inspect(registry_token, f"{unique_repo}:v1")
    for key in INSPECT_KEYS:
        assert ours[key] == theirs[key], key
    assert ours["Labels"] == theirs["Labels"]
    assert ours.get("Variant") == theirs.get("Variant")
    assert sorted(ours["RepoTags"]) == sorted(push_tag)
    assert ours["manifest_digest"] and ours["layers"]  # the existing fields stay


# -- one-line errors ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["tags", "digest", "manifest", "config", "delete"])
def test_failures_are_one_line(command, registry_plain, unique_repo):
    target = unique_repo if command == "tags" else f"{unique_repo}:v1"
    missing = run_occystrap("--insecure", command, _uri(registry_plain, target), check=False)
    assert_one_line_error(missing, "HTTP 404")
    # skopeo's spelling of a registry image: docker:// is a local daemon here.
    bad_uri = run_occystrap(command, f"docker://{registry_plain.host}/{target}", check=False)
    assert_one_line_error(bad_uri, "is not a registry image: expected registry://HOST/NAME")
    with _refusing_port() as port:
        dead = run_occystrap(
            "--insecure",
            "--retries",
            "0",
            command,
            f"registry://127.0.0.1:{port}/{target}",
            check=False,
        )
    assert_one_line_error(dead, "network error")


def test_unauthorised_is_one_line(registry_basic, unique_repo, tmp_path, no_saved_credentials):
    result = run_occystrap(
        "--insecure",
        "tags",
        _uri(registry_basic, unique_repo),
        env=no_saved_credentials,
        check=False,
    )
    assert_one_line_error(result, "HTTP 401")


def test_login_to_a_dead_host_is_one_line(tmp_path, no_saved_credentials):
    with _refusing_port() as port:
        result = run_occystrap(
            "--insecure",
            "--retries",
            "0",
            "login",
            f"127.0.0.1:{port}",
            "-u",
            "someone",
            "--password-stdin",
            input="secret",
            env=no_saved_credentials,
            check=False,
        )
    assert_one_line_error(result, "network error")
    assert "secret" not in result.stderr


def _login_on_a_terminal(registry, authfile: Path, env: dict[str, str]) -> str:
    """Run `occystrap login HOST` on a pseudo-terminal, answer its prompts, return the screen."""
    child = pty.fork()
    if child[0] == 0:  # the child: the pty is its controlling terminal, as for a user
        os.execve(
            sys.executable,
            [sys.executable, "-m", "occystrap", "--insecure", "--authfile", str(authfile)]
            + ["login", registry.host],
            {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **env},
        )
    pid, terminal = child
    screen = b""
    answers = {b"Username: ": registry.username, b"Password: ": registry.password}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the child exited and the pty closed
                break
            if not chunk:
                break
            screen += chunk
            for prompt, answer in list(answers.items()):
                if screen.endswith(prompt):
                    os.write(terminal, f"{answer}\n".encode())
                    del answers[prompt]
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen.decode(errors="replace")
    return screen.decode(errors="replace")


def test_login_prompts_on_a_terminal_without_echoing_the_password(
    registry_basic, tmp_path, no_saved_credentials
):
    authfile = tmp_path / "auth.json"
    screen = _login_on_a_terminal(registry_basic, authfile, no_saved_credentials)
    assert "Username: " in screen and "Password: " in screen
    assert registry_basic.username in screen  # the username is echoed as typed
    assert registry_basic.password not in screen
    entry = json.loads(authfile.read_text())["auths"][registry_basic.host]
    assert (
        entry["auth"]
        == base64.b64encode(
            f"{registry_basic.username}:{registry_basic.password}".encode()
        ).decode()
    )


# -- the one client: mirrors for reads only, retries -------------------------------------


def test_reads_go_through_a_mirror_but_delete_asks_the_registry(
    registry_plain, unique_repo, tmp_path
):
    _push(registry_plain, unique_repo, tmp_path)
    uri = _uri(registry_plain, f"{unique_repo}:v1")
    with ForwardingServer(registry_plain.url) as mirror:
        flags = ["--insecure", "--mirror", f"{registry_plain.host}={mirror.url}"]
        digest = run_occystrap(*flags, "digest", uri).stdout.strip()
        run_occystrap(*flags, "tags", _uri(registry_plain, unique_repo))
        assert {(r.method, r.path.rsplit("/", 2)[-2]) for r in mirror.requests} == {
            ("GET", "manifests"),  # digest hashes the manifest's bytes, as skopeo does
            ("GET", "tags"),
        }
        mirror.reset()
        deleted = run_occystrap(*flags, "delete", uri)
        assert digest in deleted.stderr
        assert mirror.requests == []  # the tag was resolved and deleted at the registry itself


def test_toolbox_requests_are_retried(fault_proxy, registry_plain, unique_repo, tmp_path):
    _push(registry_plain, unique_repo, tmp_path, ("v1", "v2"))
    fault_proxy.fail_next(2, status=503, path="/tags/list")
    result = run_occystrap(
        "--insecure", "--retries", "2", "tags", f"registry://{fault_proxy.host}/{unique_repo}"
    )
    assert sorted(result.stdout.split()) == ["v1", "v2"]
    assert len(fault_proxy.requests_matching("/tags/list")) == 3


def test_logout_removes_the_login_skopeo_saved_in_its_default_file(
    registry_basic, unique_repo, tmp_path, no_saved_credentials
):
    """skopeo writes ${XDG_RUNTIME_DIR}/containers/auth.json, which occystrap reads: logout
    removes the entry there too, so no saved login is left behind."""
    _push(registry_basic, unique_repo, tmp_path)
    saved = Path(no_saved_credentials["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    run_skopeo(
        "login", "--authfile", str(saved), "--tls-verify=false", "-u", registry_basic.username,
        "-p", registry_basic.password, registry_basic.host,
    )  # fmt: skip
    assert registry_basic.host in json.loads(saved.read_text())["auths"]
    uri = _uri(registry_basic, f"{unique_repo}:v1")
    run_occystrap("--insecure", "digest", uri, env=no_saved_credentials)  # the login is used
    result = run_occystrap("--insecure", "logout", registry_basic.host, env=no_saved_credentials)
    assert "logged out of" in result.stderr and str(saved) in result.stderr, result.stderr
    assert registry_basic.host not in json.loads(saved.read_text())["auths"]
    anonymous = run_occystrap("--insecure", "digest", uri, env=no_saved_credentials, check=False)
    assert_one_line_error(anonymous)
