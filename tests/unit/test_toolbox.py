"""The toolbox's protocol calls (tag pages, HEAD digests, deletes) through the real middleware
chain, mocked at the httpcore level; platform and URI parsing; the auth-file writer."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap import toolbox
from occystrap.credentials import Credential
from occystrap.errors import OccystrapError, RegistryError, UsageError
from occystrap.image import FileBlob, Image, Layer, SourceName
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.platforms import Platform, parse_platform
from occystrap.registry.client import RegistryClient
from occystrap.registry.inspect import PickedImage, inspect_keys
from occystrap.registry.reference import ImageReference
from occystrap.settings import RunSettings

BASE = "https://registry.test"
TAGS_URL = f"{BASE}/v2/team/app/tags/list"
DIGEST = "sha256:" + "a" * 64


def _page(tags, link: str | None = None) -> httpx.Response:
    headers = {"Link": link} if link else {}
    return httpx.Response(200, json={"name": "team/app", "tags": tags}, headers=headers)


# -- tags ---------------------------------------------------------------------------------


def test_list_tags_follows_relative_and_absolute_next_links(mock, client):
    route = mock.get(url__startswith=TAGS_URL).mock(
        side_effect=[
            _page(["a", "b"], '</v2/team/app/tags/list?last=b&n=2>; rel="next"'),
            _page(["c", "d"], f'<{TAGS_URL}?last=d&n=2>; rel="next"'),
            _page(["e"]),
        ]
    )
    assert client.list_tags("team/app", page_size=2) == ["a", "b", "c", "d", "e"]
    assert [call.request.url.query for call in route.calls] == [
        b"n=2",
        b"last=b&n=2",
        b"last=d&n=2",
    ]


def test_list_tags_without_page_size_sends_no_n(mock, client):
    route = mock.get(url__startswith=TAGS_URL).mock(return_value=_page(None))
    assert client.list_tags("team/app") == []
    assert route.calls.last.request.url.query == b""


def test_list_tags_stops_on_a_link_loop(mock, client):
    mock.get(url__startswith=TAGS_URL).mock(
        return_value=_page(["a"], '</v2/team/app/tags/list?last=a>; rel="next"')
    )
    with pytest.raises(RegistryError, match="never end"):
        client.list_tags("team/app")


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"tags": "a"}', b'{"tags": [1]}'])
def test_list_tags_refuses_what_is_not_a_tag_list(mock, client, body):
    mock.get(url__startswith=TAGS_URL).mock(return_value=httpx.Response(200, content=body))
    with pytest.raises(RegistryError, match="registry.test answered tags of team/app"):
        client.list_tags("team/app")


def test_list_tags_error_keeps_the_status(mock, client):
    mock.get(url__startswith=TAGS_URL).mock(
        return_value=httpx.Response(403, json={"errors": [{"code": "DENIED"}]})
    )
    with pytest.raises(RegistryError, match="HTTP 403.*DENIED") as caught:
        client.list_tags("team/app")
    assert (caught.value.status, caught.value.codes) == (403, ("DENIED",))


# -- head_manifest / delete_manifest ------------------------------------------------------


def test_head_manifest_uses_docker_content_digest(mock, client):
    head = mock.head(f"{BASE}/v2/team/app/manifests/v1").mock(
        return_value=httpx.Response(
            200,
            headers={
                "Docker-Content-Digest": DIGEST,
                "Content-Type": "application/vnd.oci.image.index.v1+json",
                "Content-Length": "321",
            },
        )
    )
    found = client.head_manifest("team/app", "v1")
    assert (found.digest, found.media_type, found.size) == (
        DIGEST,
        "application/vnd.oci.image.index.v1+json",
        321,
    )
    assert "application/vnd.oci.image.index.v1+json" in head.calls.last.request.headers["Accept"]


def test_head_manifest_without_a_digest_header_hashes_a_get(mock, client):
    raw = b'{"schemaVersion":2,"manifests":[]}'
    mock.head(f"{BASE}/v2/team/app/manifests/v1").mock(return_value=httpx.Response(200))
    mock.get(f"{BASE}/v2/team/app/manifests/v1").mock(return_value=httpx.Response(200, content=raw))
    assert client.head_manifest("team/app", "v1").digest == (
        "sha256:" + hashlib.sha256(raw).hexdigest()
    )


def test_head_manifest_refuses_a_digest_other_than_the_one_asked_for(mock, client):
    other = "sha256:" + "b" * 64
    mock.head(f"{BASE}/v2/team/app/manifests/{DIGEST}").mock(
        return_value=httpx.Response(200, headers={"Docker-Content-Digest": other})
    )
    with pytest.raises(RegistryError, match="rewrote"):
        client.head_manifest("team/app", DIGEST)


def test_head_manifest_404_is_a_registry_error(mock, client):
    mock.head(f"{BASE}/v2/team/app/manifests/v1").mock(return_value=httpx.Response(404))
    with pytest.raises(RegistryError, match="HTTP 404 for manifest team/app:v1"):
        client.head_manifest("team/app", "v1")


def test_delete_manifest_accepted(mock, client):
    route = mock.delete(f"{BASE}/v2/team/app/manifests/{DIGEST}").mock(
        return_value=httpx.Response(202)
    )
    client.delete_manifest("team/app", DIGEST)
    assert route.called


@pytest.mark.parametrize(
    ("status", "code"), [(405, "UNSUPPORTED"), (400, "UNSUPPORTED"), (405, "METHOD")]
)
def test_delete_refused_by_configuration_is_explained(mock, client, status, code):
    mock.delete(f"{BASE}/v2/team/app/manifests/{DIGEST}").mock(
        return_value=httpx.Response(status, json={"errors": [{"code": code}]})
    )
    with pytest.raises(RegistryError, match="does not allow deleting manifests"):
        client.delete_manifest("team/app", DIGEST)


def test_delete_other_errors_are_plain_registry_errors(mock, client):
    mock.delete(f"{BASE}/v2/team/app/manifests/{DIGEST}").mock(
        return_value=httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
    )
    with pytest.raises(RegistryError, match="HTTP 404.*MANIFEST_UNKNOWN"):
        client.delete_manifest("team/app", DIGEST)


def test_error_of_an_already_read_answer_is_a_registry_error(mock, client):
    """registry_error on a non-streamed answer used to raise httpx.StreamConsumed."""
    mock.put(f"{BASE}/v2/team/app/manifests/v1").mock(
        return_value=httpx.Response(400, json={"errors": [{"code": "MANIFEST_INVALID"}]})
    )
    with pytest.raises(RegistryError, match="HTTP 400.*MANIFEST_INVALID"):
        client.put_manifest("team/app", "v1", b"{}", "application/vnd.oci.image.manifest.v1+json")


# -- arguments ----------------------------------------------------------------------------

_WORD = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,9}", fullmatch=True)


@given(_WORD, _WORD, st.none() | _WORD)
def test_platform_round_trips(os_name, architecture, variant):
    platform = Platform(os_name, architecture, variant)
    assert parse_platform(str(platform)) == platform


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/arm64/v8/x", "", "a//b"])
def test_bad_platforms_are_one_line_errors(text):
    with pytest.raises(OccystrapError, match="expected OS/ARCH"):
        parse_platform(text)


@pytest.mark.parametrize(
    "text",
    ["registry://h:5000/team/app:v1", f"registry://h/team/app@{DIGEST}", "registry://h/app:x?os=l"],
)
def test_repository_uri_refuses_images(text):
    with pytest.raises(UsageError, match="names an image, not a repository"):
        toolbox.repository_uri(text)


def test_repository_uri_keeps_a_port_and_query():
    uri = toolbox.repository_uri("registry://h:5000/team/app?insecure=true")
    assert (uri.reference.registry, uri.reference.repository, uri.insecure) == (
        "h:5000",
        "team/app",
        True,
    )


@pytest.mark.parametrize("text", ["tar:///x", "dir:///x", "team/app"])
def test_commands_want_registry_uris(text):
    with pytest.raises(UsageError):
        toolbox.registry_uri(text)


def test_a_refused_uri_is_named_without_its_secret():
    with pytest.raises(UsageError, match="is not a registry image") as caught:
        toolbox.registry_uri("quay://org/app?token=s3cret-token")
    assert "s3cret-token" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("Reg.Example:5000", "reg.example:5000"),
        ("https://reg.example/", "reg.example"),
        ("registry://reg.example", "reg.example"),
    ],
)
def test_login_host_forms(text, host):
    assert toolbox.login_host(text) == host


@pytest.mark.parametrize("text", ["reg.example/team", "user@reg.example", ""])
def test_login_host_refuses_non_hosts(text):
    with pytest.raises(UsageError, match="expected HOST or HOST:PORT"):
        toolbox.login_host(text)


# -- the auth file ------------------------------------------------------------------------


def _decoded(entry: dict) -> str:
    return base64.b64decode(entry["auth"]).decode()


def test_login_writes_0600_keeping_other_entries_and_logout_removes_aliases(tmp_path, monkeypatch):
    authfile = tmp_path / "dir" / "auth.json"
    authfile.parent.mkdir()
    authfile.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": "b2xkOm9sZA=="},
                    "keep.example": {"auth": "a2VlcDprZWVw"},
                },
                "credHelpers": {"other.example": "pass"},
            }
        )
    )
    monkeypatch.setattr(toolbox, "_verify", lambda settings, host, credential: None)
    monkeypatch.setattr("sys.stdin", _Stdin("pa:ss word\n"))
    settings = RunSettings(authfile=authfile)
    credential = toolbox.ask_credential(settings, "alice", password_stdin=True)
    assert toolbox.login(settings, "docker.io", credential) == authfile
    written = json.loads(authfile.read_text())
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    assert written["credHelpers"] == {"other.example": "pass"}
    assert set(written["auths"]) == {"https://index.docker.io/v1/", "keep.example"}
    assert _decoded(written["auths"]["https://index.docker.io/v1/"]) == "alice:pa:ss word"
    assert list(authfile.parent.iterdir()) == [authfile]  # no temporary left behind

    assert toolbox.logout(settings, "registry-1.docker.io") == (authfile, True)
    assert set(json.loads(authfile.read_text())["auths"]) == {"keep.example"}
    assert toolbox.logout(settings, "docker.io") == (authfile, False)


def test_login_to_docker_hub_checks_registry_1_and_writes_the_hub_key(mock, tmp_path):
    expected = "Basic " + base64.b64encode(b"alice:pw").decode()

    def v2(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == expected:
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="hub"'})

    route = mock.get("https://registry-1.docker.io/v2/").mock(side_effect=v2)
    settings = RunSettings(authfile=tmp_path / "auth.json", retries=0)
    toolbox.login(settings, "docker.io", Credential("alice", "pw"))
    assert route.call_count == 2
    entry = json.loads((tmp_path / "auth.json").read_text())["auths"]
    assert list(entry) == ["https://index.docker.io/v1/"]
    with pytest.raises(RegistryError, match="login to docker.io as alice failed.*HTTP 401"):
        toolbox.login(settings, "docker.io", Credential("alice", "wrong"))


def test_ask_credential_sources(monkeypatch):
    monkeypatch.setattr("sys.stdin", _Stdin("from-stdin\nrest\n"))
    settings = RunSettings()
    assert toolbox.ask_credential(settings, "u", False).password == "from-stdin"  # one line
    assert toolbox.ask_credential(settings, "u", True).password == "from-stdin\nrest"  # to EOF
    flags = RunSettings(username="flag-user", password="flag-pw")
    assert toolbox.ask_credential(flags, None, False) == Credential("flag-user", "flag-pw")
    with pytest.raises(UsageError, match="give -u USER"):
        toolbox.ask_credential(settings, None, True)


def test_login_refuses_an_empty_password(monkeypatch):
    monkeypatch.setattr("sys.stdin", _Stdin("\n"))
    with pytest.raises(UsageError, match="empty password"):
        toolbox.ask_credential(RunSettings(), "alice", True)


def test_an_unreadable_auth_file_is_a_usage_error(tmp_path):
    authfile = tmp_path / "auth.json"
    authfile.write_text("{not json")
    with pytest.raises(UsageError, match="is not valid JSON"):
        toolbox.logout(RunSettings(authfile=authfile), "reg.example")


class _Stdin:
    """A non-terminal stdin holding `text`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def isatty(self) -> bool:
        return False

    def read(self) -> str:
        return self.text

    def readline(self) -> str:
        return self.text.partition("\n")[0] + "\n"


# -- skopeo inspect keys ------------------------------------------------------------------


def test_inspect_keys_name_docker_hub_as_skopeo_does(mock, tmp_path):
    mock.get(url__startswith="https://registry-1.docker.io/v2/library/busybox/tags/list").mock(
        return_value=httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
    )
    config = {"os": "linux", "architecture": "arm64", "variant": "v8", "config": {}}
    layer = Layer(
        DIGEST, 10, "application/vnd.oci.image.layer.v1.tar+gzip", DIGEST, FileBlob(tmp_path)
    )
    image = Image(SourceName("library/busybox"), json.dumps(config).encode(), (layer,))
    picked = PickedImage(image, "sha256:" + "d" * 64)
    reference = ImageReference("registry-1.docker.io", "library/busybox", "latest")
    with build_client(ChainSettings(NetworkSettings(retries=0))) as http:
        keys = inspect_keys(RegistryClient(http, reference.registry), reference, picked)
    assert keys["Name"] == "docker.io/library/busybox"
    assert keys["Digest"] == "sha256:" + "d" * 64  # the index's, as skopeo reports
    assert keys["RepoTags"] == []  # listing refused: skopeo carries on too
    assert (keys["Variant"], keys["Layers"], keys["Env"], keys["Labels"]) == (
        "v8",
        [DIGEST],
        None,
        None,
    )


# -- shell completion ---------------------------------------------------------------------


def _complete(words: str) -> list[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "_OCCYSTRAP_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    result = subprocess.run(
        [sys.executable, "-m", "occystrap"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_shell_completion_offers_the_commands_and_their_options():
    assert _complete("occystrap ta") == ["plain,tags"]
    assert set(_complete("occystrap d")) == {"plain,delete", "plain,digest"}
    assert "plain,--password-stdin" in _complete("occystrap login --pass")
