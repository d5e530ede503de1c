"""The config file and registries.conf through the real CLI (in-process): precedence at each
level, `occystrap config` sources, one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.cli_runner import run_cli


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    home = tmp_path / "xdg"
    (home / "occystrap").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("OCCYSTRAP_RETRIES", raising=False)
    monkeypatch.delenv("OCCYSTRAP_PARALLEL", raising=False)
    return home / "occystrap" / "config.toml"


def shown(*args: str) -> dict:
    outcome = run_cli(*args, "-O", "json", "config")
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def option(configuration: dict, key: str) -> tuple[object, str]:
    entry = configuration["options"][key]
    return entry["value"], entry["source"]


def test_each_level_wins_where_it_should(config_home, monkeypatch):
    assert option(shown(), "retries") == (3, "default")
    config_home.write_text("# tuned for the sync job\nretries = 7\nparallel = 2\n")
    assert option(shown(), "retries") == (7, f"config file ({config_home}:2)")
    monkeypatch.setenv("OCCYSTRAP_RETRIES", "9")
    assert option(shown(), "retries") == (9, "environment (OCCYSTRAP_RETRIES)")
    assert option(shown("--retries", "1"), "retries") == (1, "command line")
    assert option(shown("--retries", "1"), "parallel") == (2, f"config file ({config_home}:3)")


def test_named_file_beats_the_default_one(config_home, tmp_path, monkeypatch):
    config_home.write_text("retries = 7\n")
    named = tmp_path / "job.toml"
    named.write_text("retries = 11\n")
    monkeypatch.setenv("OCCYSTRAP_CONFIG", str(named))
    configuration = shown()
    assert option(configuration, "retries") == (11, f"config file ({named}:1)")
    assert configuration["config_file"] == str(named)
    other = tmp_path / "other.toml"
    other.write_text("retries = 12\n")
    assert option(shown("--config", str(other)), "retries")[0] == 12


def test_tables_flags_and_masked_secrets(config_home, monkeypatch):
    config_home.write_text(
        "no-cache = true\nhttp2 = false\npassword = 'hunter2'\nusername = 'me'\n"
        "[mirror]\n'docker.io' = ['https://m.example']\n"
        "[middleware.header]\nX-Api-Token = 'abc'\n"
    )
    configuration = shown()
    assert option(configuration, "no-cache")[0] is True
    assert option(configuration, "http2")[0] is False
    assert option(configuration, "password") == ("***", f"config file ({config_home}:3)")
    assert option(configuration, "mirror")[0] == ["docker.io=https://m.example"]
    assert option(configuration, "middleware")[0] == ["header:X-Api-Token=***"]
    text = run_cli("config")
    assert "hunter2" not in text.stdout and "abc" not in text.stdout


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("retries = 'many'\n", [":1: retries:", "many"]),
        ("retries = 3\nretires = 4\n", [":2: unknown option 'retires'"]),
        ("insecure = 'yes'\n", [":1: insecure takes true or false"]),
        ("compression = 'lz4'\n", [":1: compression:", "lz4"]),
        ("parallel = [1]\n", [":1: parallel takes one value"]),
        ("retries = 3\n[x\n", [":2: not valid TOML"]),
        ("config = 'x.toml'\n", [":1: unknown option 'config'"]),
    ],
)
def test_a_bad_config_file_is_one_line(config_home, text, fragments):
    config_home.write_text(text)
    run_cli("config").assert_one_line_error(str(config_home), *fragments)


def test_missing_named_files_are_one_line(tmp_path):
    run_cli("--config", str(tmp_path / "no.toml"), "config").assert_one_line_error(
        "no.toml", "cannot read"
    )
    run_cli("--registries-conf", str(tmp_path / "no.conf"), "config").assert_one_line_error(
        "no.conf", "cannot read"
    )


REGISTRIES = """\
unqualified-search-registries = ["one.example", "two.example"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "mirror.example:5000/hub"
pull-from-mirror = "digest-only"

[[registry]]
location = "evil.example"
blocked = true
"""


def test_registries_conf_is_shown_and_obeyed(tmp_path, monkeypatch):
    path = tmp_path / "registries.conf"
    path.write_text(REGISTRIES)
    configuration = shown("--registries-conf", str(path))
    assert configuration["registries_conf"] == [str(path)]
    assert option(shown("--registries-conf", str(path)), "registries-conf")[1] == "command line"
    hub, evil = configuration["registries"]
    assert hub["mirrors"] == [
        {"location": "mirror.example:5000/hub", "insecure": False, "pull": "digest-only"}
    ]
    assert evil["blocked"] and evil["from"] == f"{path}:11 (prefix 'evil.example')"
    tar = tmp_path / "x.tar"
    run_cli(
        "--registries-conf", str(path), "process", "registry://evil.example/a/b", f"tar://{tar}"
    ).assert_one_line_error("blocked by", f"{path}:11")
    run_cli(
        "--registries-conf", str(path), "process", "registry://alpine", f"tar://{tar}"
    ).assert_one_line_error("ambiguous", "one.example/alpine, two.example/alpine")
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(path))
    run_cli("digest", "registry://evil.example/a/b").assert_one_line_error("blocked by")
    assert not tar.exists() and not os.path.exists(f"{tar}.tmp")


def test_malformed_registries_conf_is_one_line(tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text('[[registry]]\nlocation = "a.example"\ninsecure = 1\n')
    run_cli("--registries-conf", str(path), "config").assert_one_line_error(
        f"{path}:3:", "insecure must be a bool"
    )


def test_registries_conf_is_read_when_a_registry_is_named(tmp_path):
    broken = tmp_path / "registries.conf"
    broken.write_text("[[registry]\n")
    run_cli(
        "--registries-conf", str(broken), "info", "registry://h.example/a"
    ).assert_one_line_error(f"{broken}:1:", "not valid TOML")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    levels=st.fixed_dictionaries(
        {},
        optional={
            "command line": st.integers(0, 100),
            "environment": st.integers(0, 100),
            "config file": st.integers(0, 100),
        },
    )
)
def test_the_highest_level_given_wins(config_home, monkeypatch, levels):
    config_home.write_text(
        f"retries = {levels['config file']}\n" if "config file" in levels else ""
    )
    if "environment" in levels:
        monkeypatch.setenv("OCCYSTRAP_RETRIES", str(levels["environment"]))
    else:
        monkeypatch.delenv("OCCYSTRAP_RETRIES", raising=False)
    flags = ["--retries", str(levels["command line"])] if "command line" in levels else []
    value, source = option(shown(*flags), "retries")
    winner = next(
        (level for level in ("command line", "environment", "config file") if level in levels), None
    )
    assert value == (levels[winner] if winner else 3)
    assert source.startswith(winner or "default")


def test_a_run_between_files_never_reads_registries_conf(tmp_path):
    """No registry, no client: a broken registries.conf does not stop a tar:// run."""
    broken = tmp_path / "registries.conf"
    broken.write_text("[[registry]\n")
    run_cli(
        "--registries-conf", str(broken), "info", f"tar://{tmp_path / 'missing.tar'}"
    ).assert_one_line_error("missing.tar")


def test_quay_organisation_blocked_before_the_api_is_asked(tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text('[[registry]]\nprefix = "quay.invalid/badorg"\nblocked = true\n')
    run_cli(
        "--registries-conf",
        str(path),
        "process",
        "quay://badorg?host=quay.invalid",
        f"dir://{tmp_path / 'out'}?unique_names=true",
    ).assert_one_line_error("blocked by", f"{path}:1")
    assert not (tmp_path / "out").exists()


def test_a_closed_stdout_ends_any_command_quietly(config_home):
    """`occystrap config | head` (any command, not only search): a reader that goes away
    ends the run with SIGPIPE's status and no error line, as grep and skopeo do."""
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "occystrap", "config"]
    root = str(Path(__file__).resolve().parents[2])
    environ = {**os.environ, "PYTHONPATH": root}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)
    assert run.stdout is not None
    run.stdout.close()  # the reader is gone before the command writes anything
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 141, stderr
    assert stderr == b""
