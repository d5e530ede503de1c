"""Credential lookup: config formats, precedence, Hub aliases and real helper programs."""

import base64
import json
import stat
from pathlib import Path

import pytest

from occystrap.credentials import Credential, CredentialStore
from occystrap.errors import UsageError


def _write_config(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _store(tmp_path: Path, document: dict, **environ: str) -> CredentialStore:
    _write_config(tmp_path / "home" / ".docker" / "config.json", document)
    return CredentialStore.load(environ=environ, home=tmp_path / "home")


@pytest.fixture
def helper_dir(tmp_path, monkeypatch):
    """A PATH holding `docker-credential-test`, which logs each call and answers per host."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "helper-calls"
    script = bindir / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        f'read host; echo "$1 $host" >> "{calls}"\n'
        'case "$host" in\n'
        '  helper.example) echo \'{"ServerURL":"x","Username":"hu","Secret":"hs"}\' ;;\n'
        '  https://index.docker.io/v1/) echo \'{"Username":"hub","Secret":"hubs"}\' ;;\n'
        '  token.example) echo \'{"Username":"<token>","Secret":"refresh"}\' ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return calls


def test_auths_entry_forms(tmp_path):
    store = _store(
        tmp_path,
        {
            "auths": {
                "https://reg.example:5000/v1/": {"auth": _auth("alice", "pa:ss")},
                "plain.example": {"username": "bob", "password": "pw"},
                "idt.example": {"identitytoken": "refresh-1"},
                "empty.example": {},
            }
        },
    )
    assert store.for_host("reg.example:5000") == Credential("alice", "pa:ss")
    assert store.for_host("reg.example") is None
    assert store.for_host("plain.example") == Credential("bob", "pw")
    assert store.for_host("idt.example") == Credential(None, None, identity_token="refresh-1")
    assert store.for_host("empty.example") is None
    assert store.for_host("other.example") is None


def test_repr_hides_secrets():
    text = repr(Credential("alice", "s3cret", identity_token="r3fresh"))
    assert "alice" in text
    assert "s3cret" not in text and "r3fresh" not in text


@pytest.mark.parametrize(
    "host", ["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"]
)
def test_docker_hub_aliases_share_the_hub_key(tmp_path, host):
    store = _store(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": _auth("u", "p")}}})
    assert store.for_host(host) == Credential("u", "p")


def test_precedence_explicit_then_auth_file_then_docker_config(tmp_path):
    auth_file = _write_config(
        tmp_path / "podman" / "auth.json",
        {"auths": {"a.example": {"auth": _auth("podman", "1")}, "quay.io/org/repo": {}}},
    )
    docker_dir = tmp_path / "dockercfg"
    _write_config(
        docker_dir / "config.json",
        {
            "auths": {
                "a.example": {"auth": _auth("docker", "2")},
                "b.example": {"auth": _auth("docker", "3")},
                "c.example": {"auth": _auth("docker", "4")},
            }
        },
    )
    store = CredentialStore.load(
        explicit={"c.example": Credential("cli", "5")},
        environ={"REGISTRY_AUTH_FILE": str(auth_file), "DOCKER_CONFIG": str(docker_dir)},
        home=tmp_path / "nohome",
    )
    assert store.for_host("a.example") == Credential("podman", "1")
    assert store.for_host("b.example") == Credential("docker", "3")
    assert store.for_host("c.example") == Credential("cli", "5")


def test_home_config_ignored_when_docker_config_is_set(tmp_path):
    _write_config(
        tmp_path / "home/.docker/config.json", {"auths": {"a": {"auth": _auth("u", "p")}}}
    )
    store = CredentialStore.load(
        environ={"DOCKER_CONFIG": str(tmp_path / "missing")}, home=tmp_path / "home"
    )
    assert store.for_host("a") is None


def test_missing_files_mean_no_credentials(tmp_path):
    store = CredentialStore.load(environ={}, home=tmp_path)
    assert store.for_host("a.example") is None
    assert CredentialStore.empty().for_host("a.example") is None


def test_cred_helpers_beat_auths_and_run_once_per_host(tmp_path, helper_dir):
    store = _store(
        tmp_path,
        {
            "auths": {"helper.example": {"auth": _auth("stored", "x")}},
            "credHelpers": {"helper.example": "test", "token.example": "test"},
        },
    )
    for _ in range(3):
        assert store.for_host("helper.example") == Credential("hu", "hs")
    assert store.for_host("token.example") == Credential(None, None, identity_token="refresh")
    assert helper_dir.read_text().splitlines() == ["get helper.example", "get token.example"]


def test_creds_store_is_the_fallback_after_auths(tmp_path, helper_dir):
    store = _store(
        tmp_path,
        {"auths": {"stored.example": {"auth": _auth("s", "p")}}, "credsStore": "test"},
    )
    assert store.for_host("stored.example") == Credential("s", "p")
    assert store.for_host("registry-1.docker.io") == Credential("hub", "hubs")
    assert helper_dir.read_text().splitlines() == ["get https://index.docker.io/v1/"]


def test_helper_failure_or_absence_means_no_credential(tmp_path, helper_dir, caplog):
    store = _store(
        tmp_path,
        {"credHelpers": {"unknown.example": "test", "gone.example": "absent"}},
    )
    with caplog.at_level("DEBUG", logger="occystrap.credentials"):
        assert store.for_host("unknown.example") is None
        assert store.for_host("gone.example") is None
    assert "docker-credential-absent" in caplog.text
    assert "exit 1" in caplog.text


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"auths": {"a": {"auth": "!!notbase64"}}}']
)
def test_malformed_config_raises_usage_error_naming_the_file(tmp_path, text):
    path = tmp_path / "auth.json"
    path.write_text(text)
    with pytest.raises(UsageError, match="auth.json"):
        CredentialStore.load(environ={"REGISTRY_AUTH_FILE": str(path)}, home=tmp_path)
