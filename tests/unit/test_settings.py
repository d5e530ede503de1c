"""RunSettings: per-end credentials of a copy, and the chain settings built from them."""

from dataclasses import fields

import pytest

from occystrap import cli
from occystrap.credentials import Credential
from occystrap.errors import UsageError
from occystrap.middleware.options import NetworkSettings
from occystrap.settings import RunSettings, copy_credentials, parse_creds

SRC = Credential("src", "1")
DEST = Credential("dest", "2")


def test_parse_creds_keeps_colons_in_the_password():
    assert parse_creds("user:pa:ss", "--src-creds") == Credential("user", "pa:ss")
    assert parse_creds(None, "--src-creds") is None


@pytest.mark.parametrize("value", ["user", ":pass", "user:", ""])
def test_parse_creds_refuses_incomplete_pairs_naming_the_flag(value):
    with pytest.raises(UsageError, match="--dest-creds"):
        parse_creds(value, "--dest-creds")


def test_different_hosts_are_keyed_by_host():
    assert copy_credentials(("a.example/x", SRC), ("b.example:5000/y", DEST)) == {
        "a.example": SRC,
        "b.example:5000": DEST,
    }


def test_file_ends_and_ends_without_credentials_are_left_out():
    assert copy_credentials((None, SRC), ("b.example/y", DEST)) == {"b.example": DEST}
    assert copy_credentials(("a.example/x", None), ("b.example/y", DEST)) == {"b.example": DEST}


def test_one_credential_for_both_ends_of_a_host_is_host_wide():
    assert copy_credentials(("r.example/x", SRC), ("r.example/y", SRC)) == {"r.example": SRC}


def test_same_host_different_credentials_are_scoped_to_each_repository():
    assert copy_credentials(("r.example/team/x", SRC), ("R.example/y", DEST)) == {
        "r.example/team/x": SRC,
        "r.example/y": DEST,
    }
    # Only the source has its own: the destination keeps using the auth files.
    assert copy_credentials(("r.example/x", SRC), ("r.example/y", None)) == {"r.example/x": SRC}
    # A bulk source (the whole host) and a destination prefix on it.
    assert copy_credentials(("quay.io", SRC), ("quay.io/mirror", DEST)) == {
        "quay.io": SRC,
        "quay.io/mirror": DEST,
    }


@pytest.mark.parametrize(
    "source, destination",
    [
        ("r.example/x", "r.example/x"),
        ("r.example", "r.example"),
        ("docker.io/a", "index.docker.io/a"),
    ],
)
def test_two_credentials_for_one_repository_are_refused(source, destination):
    with pytest.raises(UsageError, match="--src-creds and --dest-creds differ"):
        copy_credentials((source, SRC), (destination, DEST))


def test_copy_chain_settings_routes_each_ends_credential():
    settings = RunSettings(username="both", password="p", src_creds=SRC)
    store = settings.copy_chain_settings("a.example/x", "b.example/y").credentials
    assert store.for_host("a.example", "x") == SRC
    assert store.for_host("b.example", "y") == Credential("both", "p")
    store = (
        RunSettings(src_creds=SRC, dest_creds=DEST)
        .copy_chain_settings("r.example/x", "r.example/y")
        .credentials
    )
    assert store.for_host("r.example", "x") == SRC
    assert store.for_host("r.example", "y") == DEST


def test_tls_settings_reach_the_chain(tmp_path):
    chain = RunSettings(tls_verify=False, certs_dirs=(tmp_path,)).chain_settings(["r.example"])
    assert chain.network.tls_verify is False
    assert chain.network.certs_dirs == (tmp_path,)


def _parsed(*args: str) -> RunSettings:
    """RunSettings from real command-line parsing (no command runs)."""
    context = cli.main.make_context("occystrap", [*args, "info", "tar:///x.tar"])
    return RunSettings.from_options(context.params)


def test_compression_level_and_cache_default_to_the_engine_level_and_on():
    settings = _parsed()
    assert settings.compression_level is None
    assert settings.use_cache is True


def test_compression_level_and_no_cache_from_flags_and_environment(monkeypatch):
    assert _parsed("--compression-level", "3").compression_level == 3
    assert _parsed("--no-cache").use_cache is False
    monkeypatch.setenv("OCCYSTRAP_COMPRESSION_LEVEL", "2")
    monkeypatch.setenv("OCCYSTRAP_NO_CACHE", "1")
    settings = _parsed()
    assert (settings.compression_level, settings.use_cache) == (2, False)


def test_compression_level_is_checked_against_the_chosen_kind():
    assert _parsed("--compression", "zstd", "--compression-level", "19").compression_level == 19
    with pytest.raises(UsageError, match="out of range for gzip"):
        _parsed("--compression-level", "19")


def test_paths_given_as_strings_become_paths(tmp_path):
    settings = RunSettings(
        authfile=str(tmp_path / "auth.json"),  # type: ignore[arg-type]
        temp_dir=str(tmp_path),  # type: ignore[arg-type]
        certs_dirs=[str(tmp_path)],  # type: ignore[arg-type]
        platform="linux/arm64/v8",  # type: ignore[arg-type]
    )
    assert settings.authfile == tmp_path / "auth.json"
    assert settings.temp_dir == tmp_path
    assert settings.certs_dirs == (tmp_path,)
    assert (settings.platform.architecture, settings.platform.variant) == ("arm64", "v8")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"authfile": 3}, "authfile takes a path"),
        ({"temp_dir": ""}, "temp_dir takes a path"),
        ({"mirrors": "docker.io=http://m"}, "mirrors takes a list or tuple"),
        ({"certs_dirs": "/etc/certs"}, "certs_dirs takes a list or tuple"),
        ({"parallel": 0}, "parallel takes a whole number from 1"),
        ({"retries": -1}, "retries takes a whole number from 0"),
        ({"compression": "xz"}, "compression takes gzip or zstd"),
        ({"compression": "zstd", "compression_level": 99}, "out of range for zstd"),
        ({"output_format": "yaml"}, "output_format takes text or json"),
        ({"platform": 7}, "platform takes OS/ARCH"),
        ({"username": "alone"}, "--username and --password go together"),
    ],
)
def test_bad_settings_are_one_line_errors_when_built(options, message):
    with pytest.raises(UsageError, match=message) as caught:
        RunSettings(**options)
    assert "\n" not in str(caught.value)


def test_dest_compress_chooses_the_kind_and_level_and_keep_is_the_default():
    kept = _parsed()
    assert (kept.recompress, kept.compression) == (False, "gzip")
    assert _parsed("--dest-compress-keep").recompress is False
    chosen = _parsed("--dest-compress", "zstd", "--dest-compress-level", "19")
    assert (chosen.recompress, chosen.compression, chosen.compression_level) == (True, "zstd", 19)
    assert _parsed("--compression-level", "2", "--dest-compress", "gzip").compression_level == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--dest-compress", "zstd", "--dest-compress-keep"], "exclude each other"),
        (["--dest-compress-level", "3"], "goes with --dest-compress"),
        (["--dest-compress", "gzip", "--dest-compress-level", "5"], "out of range for gzip"),
        (
            ["--dest-compress", "zstd", "--compression-level", "3", "--dest-compress-level", "4"],
            "differ: give one",
        ),
    ],
)
def test_dest_compress_conflicts_are_one_line_errors(args, fragment):
    with pytest.raises(UsageError, match=fragment):
        _parsed(*args)


def test_every_network_option_reaches_the_chain(tmp_path):
    """Declared once (NetworkSettings), an option given to RunSettings is what the chain
    is built from, with nothing to copy by hand."""
    changed = {
        "retries": 7,
        "rate_limits": ("5",),
        "mirrors": ("docker.io=https://mirror.example",),
        "middlewares": ("header:X-A=b",),
        "quay_token": "token",
        "http2": False,
        "parallel": 9,
        "ca_cert": str(tmp_path / "ca.pem"),
        "tls_verify": False,
        "certs_dirs": (tmp_path,),
        "insecure": True,
        "timeout": 12.0,
        "connect_timeout": 3.0,
        "deadline": 60.0,
    }
    assert set(changed) == {option.name for option in fields(NetworkSettings)}
    network = RunSettings(**changed).chain_settings().network
    assert type(network) is NetworkSettings
    for name, value in changed.items():
        assert getattr(network, name) == value, name
        assert getattr(NetworkSettings(), name) != value, name  # not the default by chance


def test_every_network_option_has_a_global_flag_of_its_name():
    """What lets `from_options` take the network options by name: a new option is its
    NetworkSettings field and a flag whose value is named as the field."""
    flags = {param.name for param in cli.main.params}
    assert {option.name for option in fields(NetworkSettings)} <= flags


def test_network_flags_arrive_by_name(tmp_path):
    settings = _parsed(
        "--retries", "5", "--timeout", "7", "--deadline", "90", "--insecure", "--no-http2",
        "--mirror", "docker.io=https://a.example,quay.io=https://b.example",
        "--certs-dir", str(tmp_path), "--tls-verify", "false", "-j", "2",
    )  # fmt: skip
    network = settings.chain_settings().network
    assert (network.retries, network.timeout, network.deadline) == (5, 7.0, 90.0)
    assert (network.insecure, network.http2, network.tls_verify, network.parallel) == (
        True,
        False,
        False,
        2,
    )
    assert network.mirrors == ("docker.io=https://a.example", "quay.io=https://b.example")
    assert network.certs_dirs == (tmp_path,)
    assert _parsed().certs_dirs is None  # no --certs-dir: the standard places
