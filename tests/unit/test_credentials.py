"""Credential lookup: config formats, precedence, Hub aliases and real helper programs."""

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.credentials import (
    DOCKER_HUB_KEY,
    Credential,
    CredentialStore,
    auth_file_for_writing,
    auth_files_for_reading,
    format_auth_key,
    parse_auth_key,
    remove_credential,
    store_credential,
)
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


def test_explicit_beats_auth_file_which_replaces_the_search_list(tmp_path):
    """$REGISTRY_AUTH_FILE (like --authfile) is the only file read, as in podman and skopeo."""
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
    assert store.for_host("b.example") is None
    assert store.for_host("c.example") == Credential("cli", "5")
    without_override = CredentialStore.load(
        environ={"DOCKER_CONFIG": str(docker_dir)}, home=tmp_path / "nohome"
    )
    assert without_override.for_host("b.example") == Credential("docker", "3")


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


# --- where the files are, in podman's order ------------------------------------------------


def _every_file(tmp_path: Path) -> dict[str, Path]:
    """One file at each standard place, each knowing `shared` and a host of its own."""
    home = tmp_path / "home"
    places = {
        "runtime": tmp_path / "run" / "containers" / "auth.json",
        "config": tmp_path / "xdgconfig" / "containers" / "auth.json",
        "docker": home / ".docker" / "config.json",
    }
    for name, path in places.items():
        _write_config(
            path,
            {
                "auths": {
                    "shared.example": {"auth": _auth(name, "p")},
                    f"{name}.example": {"auth": _auth(name, "p")},
                }
            },
        )
    legacy = home / ".dockercfg"
    legacy.write_text(
        json.dumps(
            {
                "shared.example": {"auth": _auth("legacy", "p")},
                "legacy.example": {"auth": _auth("legacy", "p")},
            }
        )
    )
    return {**places, "legacy": legacy, "home": home}


def test_files_are_read_in_the_order_podman_and_skopeo_use(tmp_path):
    files = _every_file(tmp_path)
    environ = {
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdgconfig"),
    }
    assert auth_files_for_reading(None, environ, files["home"]) == [
        files["runtime"],
        files["config"],
        files["docker"],
        files["legacy"],
    ]
    store = CredentialStore.load(environ=environ, home=files["home"])
    assert store.for_host("shared.example") == Credential("runtime", "p")
    for name in ("runtime", "config", "docker", "legacy"):
        assert store.for_host(f"{name}.example") == Credential(name, "p"), name


def test_each_later_file_answers_once_the_earlier_ones_are_gone(tmp_path):
    files = _every_file(tmp_path)
    environ = {
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdgconfig"),
    }
    for gone, next_one in (("runtime", "config"), ("config", "docker"), ("docker", "legacy")):
        files[gone].unlink()
        store = CredentialStore.load(environ=environ, home=files["home"])
        assert store.for_host("shared.example") == Credential(next_one, "p")


def test_default_places_without_xdg_variables(tmp_path):
    home = tmp_path / "home"
    assert auth_files_for_reading(None, {}, home) == [
        Path(f"/run/containers/{os.getuid()}/auth.json"),
        home / ".config" / "containers" / "auth.json",
        home / ".docker" / "config.json",
        home / ".dockercfg",
    ]
    assert auth_files_for_reading(None, {"DOCKER_CONFIG": "/d"}, home)[2] == Path("/d/config.json")


def test_authfile_beats_registry_auth_file_and_replaces_everything(tmp_path):
    files = _every_file(tmp_path)
    chosen = _write_config(
        tmp_path / "chosen.json", {"auths": {"x.example": {"auth": _auth("c", "p")}}}
    )
    environ = {"REGISTRY_AUTH_FILE": str(files["docker"]), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert auth_files_for_reading(chosen, environ, files["home"]) == [chosen]
    assert auth_files_for_reading(None, environ, files["home"]) == [files["docker"]]
    store = CredentialStore.load(environ=environ, home=files["home"], authfile=chosen)
    assert store.for_host("x.example") == Credential("c", "p")
    assert store.for_host("shared.example") is None
    missing = CredentialStore.load(environ={}, home=files["home"], authfile=tmp_path / "none.json")
    assert missing.for_host("shared.example") is None


# --- keys scoped to a namespace or repository ------------------------------------------------


def test_most_specific_key_wins_and_url_keys_are_host_wide(tmp_path):
    store = _store(
        tmp_path,
        {
            "auths": {
                "reg.example": {"auth": _auth("host", "p")},
                "reg.example/team": {"auth": _auth("team", "p")},
                "reg.example/team/app": {"auth": _auth("app", "p")},
                "https://old.example/v1/": {"auth": _auth("old", "p")},
                "docker.io/library/busybox": {"auth": _auth("hubrepo", "p")},
            }
        },
    )
    assert store.for_host("reg.example", "team/app") == Credential("app", "p")
    assert store.for_host("reg.example", "team/app2") == Credential("team", "p")
    assert store.for_host("reg.example", "team/app/sub") == Credential("app", "p")
    assert store.for_host("reg.example", "other") == Credential("host", "p")
    assert store.for_host("reg.example") == Credential("host", "p")
    assert store.for_host("old.example", "any/repo") == Credential("old", "p")
    assert store.for_host("registry-1.docker.io", "library/busybox") == Credential("hubrepo", "p")
    assert store.for_host("registry-1.docker.io", "library/alpine") is None


def test_repository_key_alone_does_not_open_the_whole_host(tmp_path):
    store = _store(tmp_path, {"auths": {"quay.io/org/repo": {"auth": _auth("u", "p")}}})
    assert store.for_host("quay.io") is None
    assert store.for_host("quay.io", "org/other") is None
    assert store.for_host("quay.io", "org/repo") == Credential("u", "p")


def test_plain_host_key_beats_the_old_url_key_for_the_same_host(tmp_path):
    document = {
        "auths": {
            "reg.example": {"auth": _auth("plain", "p")},
            "https://reg.example/v1/": {"auth": _auth("url", "p")},
        }
    }
    assert _store(tmp_path, document).for_host("reg.example") == Credential("plain", "p")
    reordered = {"auths": dict(reversed(list(document["auths"].items())))}
    assert _store(tmp_path, reordered).for_host("reg.example") == Credential("plain", "p")


def test_explicit_credentials_can_be_scoped_to_a_repository(tmp_path):
    store = CredentialStore(
        {"reg.example/src": Credential("s", "1"), "reg.example/dst": Credential("d", "2")}, []
    )
    assert store.for_host("reg.example", "src") == Credential("s", "1")
    assert store.for_host("reg.example", "dst/sub") == Credential("d", "2")
    assert store.for_host("reg.example", "elsewhere") is None


_segment = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,6}", fullmatch=True)


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{2,4})?(:[0-9]{2,5})?", fullmatch=True),
    path=st.lists(_segment, max_size=3).map("/".join),
)
def test_written_keys_parse_back_to_the_same_key(host, path):
    key = parse_auth_key(f"{host}/{path}" if path else host)
    assert parse_auth_key(format_auth_key(key)) == key
    assert parse_auth_key(f"https://{host}/v1/") == (key[0], "")


# --- credential helpers that are missing or broken ---------------------------------------------


def test_missing_or_failing_helper_is_one_warning_naming_it(tmp_path, helper_dir, caplog):
    broken = tmp_path / "bin" / "docker-credential-broken"
    broken.write_text("#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n")
    broken.chmod(0o755)
    store = _store(
        tmp_path,
        {
            "credHelpers": {
                "a.example": "absent",
                "b.example": "absent",
                "c.example": "broken",
                "d.example": "broken",
                "unknown.example": "test",
            }
        },
    )
    with caplog.at_level("WARNING", logger="occystrap.credentials"):
        for host in ("a.example", "b.example", "c.example", "d.example", "unknown.example"):
            assert store.for_host(host) is None
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert "docker-credential-absent" in warnings[0] and "not installed" in warnings[0]
    assert "docker-credential-broken" in warnings[1] and "keychain locked" in warnings[1]
    assert "exit 3" in warnings[1]


def test_helper_asked_once_per_host_across_repositories(tmp_path, helper_dir):
    store = _store(tmp_path, {"credHelpers": {"helper.example": "test"}})
    for repository in ("a", "b/c", ""):
        assert store.for_host("helper.example", repository) == Credential("hu", "hs")
    assert helper_dir.read_text().splitlines() == ["get helper.example"]


# --- writing, for login and logout -------------------------------------------------------------


def test_file_for_writing(tmp_path):
    home = tmp_path / "home"
    explicit = tmp_path / "x.json"
    environ = {"REGISTRY_AUTH_FILE": str(tmp_path / "env.json"), "DOCKER_CONFIG": "/d"}
    assert auth_file_for_writing(explicit, environ, home) == explicit
    assert auth_file_for_writing(None, environ, home) == tmp_path / "env.json"
    assert auth_file_for_writing(None, {"DOCKER_CONFIG": "/d"}, home) == Path("/d/config.json")
    assert auth_file_for_writing(None, {}, home) == home / ".docker" / "config.json"


def test_store_and_remove_keep_every_other_entry(tmp_path):
    path = _write_config(
        tmp_path / "new" / "auth.json",
        {
            "auths": {
                "https://reg.example/v1/": {"auth": _auth("old", "p")},
                "keep.example": {"auth": _auth("k", "p")},
            },
            "credsStore": "desktop",
            "HttpHeaders": {"X": "y"},
        },
    )
    assert store_credential(path, "REG.example", Credential("new", "pa:ss")) == "reg.example"
    assert store_credential(path, "docker.io", Credential("hub", "p")) == DOCKER_HUB_KEY
    assert store_credential(path, "reg.example/team", Credential("t", "p")) == "reg.example/team"
    document = json.loads(path.read_text())
    assert set(document["auths"]) == {
        "reg.example",
        "keep.example",
        DOCKER_HUB_KEY,
        "reg.example/team",
    }
    assert document["credsStore"] == "desktop" and document["HttpHeaders"] == {"X": "y"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = CredentialStore.load(environ={}, home=tmp_path, authfile=path)
    assert store.for_host("reg.example") == Credential("new", "pa:ss")
    assert store.for_host("registry-1.docker.io") == Credential("hub", "p")
    assert remove_credential(path, "reg.example") is True
    assert remove_credential(path, "reg.example") is False
    assert remove_credential(path, "index.docker.io") is True
    assert set(json.loads(path.read_text())["auths"]) == {"keep.example", "reg.example/team"}
    assert remove_credential(tmp_path / "absent.json", "reg.example") is False


def test_store_creates_the_file_and_its_directory_private(tmp_path):
    path = tmp_path / "fresh" / "dir" / "auth.json"
    store_credential(path, "127.0.0.1:5000", Credential("u", "p"))
    assert json.loads(path.read_text()) == {"auths": {"127.0.0.1:5000": {"auth": _auth("u", "p")}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [entry for entry in path.parent.iterdir() if entry != path]


def test_store_refuses_to_rewrite_a_broken_file(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text("{broken")
    with pytest.raises(UsageError, match="auth.json"):
        store_credential(path, "reg.example", Credential("u", "p"))
    assert path.read_text() == "{broken"
