"""occystrap's config file: values with their lines, tables as repeated options, masking."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap import config_file
from occystrap.config_file import ConfigFile, ConfigValue, mask
from occystrap.tomlfile import ConfigFileError


def test_values_tables_and_lines(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        "retries = 5\n"
        "compression = 'zstd'\n"
        "\n"
        "[rate-limit]\n"
        "'*' = 10\n"
        "'quay.io' = 2.5\n"
        "[mirror]\n"
        "'docker.io' = ['https://m1.example', 'http://m2.example:5000']\n"
        "'quay.io' = 'https://m3.example'\n"
        "[middleware.stamp]\n"
        "header = 'X-Run'\n"
        "verbose = true\n"
    )
    loaded = config_file.load(path)
    assert loaded.values["retries"] == ConfigValue(5, 1)
    assert loaded.values["compression"] == ConfigValue("zstd", 2)
    assert loaded.values["rate-limit"] == ConfigValue(["10", "quay.io=2.5"], 4)
    assert loaded.values["mirror"].value == [
        "docker.io=https://m1.example",
        "docker.io=http://m2.example:5000",
        "quay.io=https://m3.example",
    ]
    assert loaded.values["middleware"].value == ["stamp:header=X-Run,verbose=true"]
    assert loaded.where("mirror") == f"{path}:7"


def test_default_file_is_optional_named_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_file.load(None) == ConfigFile()
    (tmp_path / "occystrap").mkdir()
    (tmp_path / "occystrap" / "config.toml").write_text("parallel = 2\n")
    assert config_file.load(None).values["parallel"].value == 2
    with pytest.raises(ConfigFileError, match="cannot read"):
        config_file.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "line", "complaint"),
    [
        ("retries = 5\nparallel = \n", 2, "not valid TOML"),
        ("[rate-limit]\n'quay.io' = 'fast'\n", 2, "requests per second"),
        ("[mirror]\n'docker.io' = 5\n", 2, "URL or a list"),
        ("[middleware]\nstamp = 1\n", 2, "[middleware.stamp]"),
        ("[retries]\nx = 1\n", 1, "only rate-limit, mirror and middleware"),
    ],
)
def test_malformed_is_one_line(tmp_path, text, line, complaint):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        config_file.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: ") and complaint in message
    assert "\n" not in message


def test_secrets_are_masked():
    assert mask("password", "hunter2") == "***"
    assert mask("quay-token", "t") == "***" and mask("src-creds", "u:p") == "***"
    assert mask("retries", 3) == 3 and mask("password", None) is None
    assert mask("middleware", ["stamp:api-token=abc,header=X", "plain"]) == [
        "stamp:api-token=***,header=X",
        "plain",
    ]


@given(st.text(max_size=200))
def test_any_file_loads_or_fails_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("c") / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config_file.load(path)
    except ConfigFileError as exc:
        assert str(exc).startswith(f"{path}:") and "\n" not in str(exc)
