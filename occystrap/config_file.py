"""occystrap's own configuration file: any global option, as TOML, below the command line and
the environment (command line > environment > config file > defaults).

Keys are the global options' long names (`retries = 5`, `rate-limit = ["10"]`); three
repeatable options also take a table, which reads better for many hosts:

    [rate-limit]            # HOST = requests per second ("*" for the overall limit)
    "quay.io" = 2
    [mirror]                # SOURCE = URL, or a list of URLs tried in order
    "docker.io" = ["https://mirror.example:5000"]
    [middleware.NAME]       # a plug-in and its options
    option = "value"

Reading is pure: `load` returns each key's value and line; which keys exist and what type
each takes is the command line's business (cli.py checks them against its options).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from occystrap.registries_conf import config_home
from occystrap.tomlfile import ConfigFileError, line_of, read_toml

# Option values these words name are masked whenever configuration is shown.
SECRET_WORDS = ("password", "token", "secret", "creds")


@dataclass(frozen=True)
class ConfigValue:
    value: object
    line: int


@dataclass(frozen=True)
class ConfigFile:
    path: Path | None = None  # None: no file was found (nor named)
    values: Mapping[str, ConfigValue] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """FILE:LINE of `key`, for messages and `occystrap config`."""
        return f"{self.path}:{self.values[key].line}"


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    return config_home(environ) / "occystrap" / "config.toml"


def load(explicit: Path | None) -> ConfigFile:
    """`explicit` (--config or $OCCYSTRAP_CONFIG), which must exist, else the default file
    if there is one."""
    path, required = (explicit, True) if explicit is not None else (default_path(), False)
    if not required and not path.is_file():
        return ConfigFile()
    document, text = read_toml(path)
    values: dict[str, ConfigValue] = {}
    for key, value in document.items():
        line = line_of(text, key)
        if isinstance(value, dict):
            line = _table_line(text, key)
            value = _table_as_list(path, text, key, value)
        values[key] = ConfigValue(value, line)
    return ConfigFile(path, values)


def _table_line(text: str, key: str) -> int:
    """The line of the first `[key]` or `[key.NAME]` header."""
    header = re.compile(rf"""^\s*\[\s*(?:"{re.escape(key)}"|{re.escape(key)})\s*[.\]]""")
    lines = text.splitlines()
    return next((n + 1 for n, line in enumerate(lines) if header.match(line)), 1)


def _table_as_list(path: Path, text: str, key: str, table: Mapping[str, object]) -> list[str]:
    """A [rate-limit], [mirror] or [middleware.NAME] table as the option's repeated values."""

    def fail(message: str, inner: str = "") -> NoReturn:
        raise ConfigFileError(f"{path}:{line_of(text, inner, key)}: [{key}]: {message}")

    values: list[str] = []
    if key == "rate-limit":
        for host, rate in table.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                fail(f"{host} = {rate!r}: a rate is a number of requests per second", host)
            values.append(str(rate) if host == "*" else f"{host}={rate}")
    elif key == "mirror":
        for source, urls in table.items():
            listed = [urls] if isinstance(urls, str) else urls
            if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
                fail(f"{source}: a mirror is a URL or a list of URLs", source)
            values += [f"{source}={url}" for url in listed]
    elif key == "middleware":
        for name, options in table.items():
            if not isinstance(options, dict):
                fail(f"{name}: a plug-in's options are a table [middleware.{name}]", name)
            pairs = ",".join(f"{option}={_plain(value)}" for option, value in options.items())
            values.append(f"{name}:{pairs}" if pairs else name)
    else:
        fail("only rate-limit, mirror and middleware may be tables; give a value instead")
    return values


def _plain(value: object) -> str:
    """A TOML value as the text a --middleware NAME:k=v option would carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def mask(key: str, value: object) -> object:
    """`value` of option `key` with secrets replaced by ***, for showing configuration."""
    if value is None:
        return None
    if any(word in key for word in SECRET_WORDS):
        return "***"
    if key == "middleware" and isinstance(value, (list, tuple)):
        return [_mask_spec(str(spec)) for spec in value]
    return value


def _mask_spec(spec: str) -> str:
    """NAME:k=v,... with the values of secret-sounding options masked."""
    name, colon, options = spec.partition(":")
    if not colon:
        return spec
    masked = []
    for pair in options.split(","):
        option, equals, _ = pair.partition("=")
        secret = equals and any(word in option.lower() for word in SECRET_WORDS)
        masked.append(f"{option}=***" if secret else pair)
    return f"{name}:{','.join(masked)}"
