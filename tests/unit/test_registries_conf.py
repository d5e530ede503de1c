"""registries.conf v2: parsing, drop-in merging, prefix matching, short names, one-line errors."""

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap import registries_conf
from occystrap.endpoints import parse_uri
from occystrap.errors import UsageError
from occystrap.registries_conf import (
    MirrorEntry,
    RegistriesConf,
    is_short_name,
    load_files,
    split_name,
    standard_paths,
)
from occystrap.registry.reference import parse_reference
from occystrap.tomlfile import ConfigFileError

EXAMPLE = """\
unqualified-search-registries = ["registry.example", "docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "mirror.local:5000/hub"

[[registry.mirror]]
location = "plain.local:5001"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "old.example/team"
location = "new.example:8443/team"
insecure = true

[[registry]]
location = "evil.example"
blocked = true

[aliases]
"app" = "registry.example/apps/app"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def conf_of(tmp_path: Path, text: str, *drop_ins: tuple[str, str]) -> RegistriesConf:
    main = write(tmp_path, "registries.conf", text)
    for name, body in drop_ins:
        write(tmp_path / "d", name, body)
    return load_files(main, True, [tmp_path / "d"])


def test_example_parses(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE)
    assert conf.unqualified_search_registries == ("registry.example", "docker.io")
    hub = conf.entry_for(parse_reference("docker.io/library/alpine:3"))
    assert hub is not None and hub.prefix == "registry-1.docker.io"
    assert hub.mirrors == (
        MirrorEntry("mirror.local:5000/hub"),
        MirrorEntry("plain.local:5001", insecure=True, pull_from_mirror="digest-only"),
    )


def test_location_rewrite_keeps_the_rest(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE)
    reference = conf.apply(parse_reference("old.example/team/app:v1"), "x")
    assert str(reference) == "new.example:8443/team/app:v1"
    untouched = conf.apply(parse_reference("old.example/teamster/app"), "x")
    assert str(untouched) == "old.example/teamster/app:latest"


def test_insecure_hosts_are_locations_and_mirrors(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE)
    assert conf.insecure_host("new.example:8443") and conf.insecure_host("plain.local:5001")
    assert not conf.insecure_host("old.example") and not conf.insecure_host("mirror.local:5000")
    assert not conf.insecure_host("new.example") and not conf.insecure_host("docker.io")
    wildcard = RegistriesConf(
        registries=(registries_conf.RegistryEntry("*.lab.example", "*.lab.example", True),)
    )
    assert wildcard.insecure_host("a.lab.example:5000") and not wildcard.insecure_host(
        "lab.example"
    )


def test_blocked_names_file_and_entry(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE)
    with pytest.raises(UsageError) as raised:
        conf.apply(parse_reference("evil.example/x/y"), "registry://evil.example/x/y")
    message = str(raised.value)
    assert "blocked" in message and f"{tmp_path / 'registries.conf'}:20" in message
    assert "'evil.example'" in message and "\n" not in message


def test_longest_prefix_wins_and_port_is_another_registry():
    conf = RegistriesConf(
        registries=(
            registries_conf.RegistryEntry("h.example", "h.example"),
            registries_conf.RegistryEntry("h.example/a", "h.example/a", blocked=True),
        )
    )
    assert conf.entry_for(parse_reference("h.example/a/b")).blocked
    assert not conf.entry_for(parse_reference("h.example/ab")).blocked
    assert conf.entry_for(parse_reference("h.example:5000/a/b")) is None


def test_wildcard_prefix_matches_subdomains():
    entry = registries_conf.RegistryEntry("*.example.com", "*.example.com", insecure=True)
    conf = RegistriesConf(registries=(entry,))
    assert conf.apply(parse_reference("a.b.example.com:5000/x"), "x").registry.endswith(".com:5000")
    assert conf.insecure_host("a.b.example.com:5000")
    assert conf.entry_for(parse_reference("example.com/x")) is None


def test_drop_ins_override_in_order(tmp_path):
    conf = conf_of(
        tmp_path,
        EXAMPLE,
        ("10-search.conf", 'unqualified-search-registries = ["only.example"]\n'),
        ("20-aliases.conf", '[aliases]\n"app" = ""\n"tool" = "quay.io/t/tool"\n'),
        ("30-evil.conf", '[[registry]]\nlocation = "evil.example"\n'),
        ("ignored.txt", "not toml ["),
    )
    assert conf.unqualified_search_registries == ("only.example",)
    assert set(conf.aliases) == {"tool"}
    assert not conf.entry_for(parse_reference("evil.example/x/y")).blocked
    assert [path.name for path in conf.files] == [
        "registries.conf",
        "10-search.conf",
        "20-aliases.conf",
        "30-evil.conf",
    ]


def test_short_names(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE)
    assert [str(r) for r in conf.resolve_short_name("app:v2")] == ["registry.example/apps/app:v2"]
    with pytest.raises(UsageError) as raised:
        conf.resolve_short_name("alpine")
    assert "registry.example/alpine, docker.io/alpine" in str(raised.value)
    single = RegistriesConf(unqualified_search_registries=("docker.io",))
    (only,) = single.resolve_short_name("alpine@sha256:" + "a" * 64)
    assert str(only).startswith("registry-1.docker.io/library/alpine@sha256:")
    with pytest.raises(UsageError, match="expected HOST"):
        RegistriesConf().resolve_short_name("busybox")


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_short_names_try_every_search_registry_in_order_unless_enforcing(tmp_path, mode):
    """podman's modes where nothing can prompt: enforcing refuses an ambiguous name,
    permissive and disabled try each search registry in turn (an alias still wins)."""
    conf = replace(conf_of(tmp_path, EXAMPLE), short_name_mode=mode)
    candidates = [str(reference) for reference in conf.resolve_short_name("alpine:3")]
    assert candidates == ["registry.example/alpine:3", "registry-1.docker.io/library/alpine:3"]
    assert len(conf.resolve_short_name("app")) == 1
    with registries_conf.activated(conf):
        uri = parse_uri("registry://alpine:3")
    assert str(uri.reference) == "registry.example/alpine:3"
    assert [str(r) for r in uri.alternatives] == ["registry-1.docker.io/library/alpine:3"]


def test_what_is_a_short_name(tmp_path):
    conf = conf_of(tmp_path, EXAMPLE + '"team/tool" = "quay.io/team/tool"\n')
    assert is_short_name("alpine", conf) and is_short_name("alpine:3", conf)
    assert is_short_name("team/tool:1", conf)
    assert not is_short_name("h/i", conf)  # a one-label host, as registry:// always read it
    assert not is_short_name("localhost/i", conf) and not is_short_name("h.example/i", conf)


@pytest.mark.parametrize(
    ("text", "line", "complaint"),
    [
        ('[[registry]]\nprefix = "a.example"\ninsecure = "yes"\n', 3, "insecure must be a bool"),
        ("[[registry]]\nprefix = 'x.example'\n[[registry]]\nblocked = true\n", 3, "prefix or"),
        ('[[registry]]\nlocation = "https://a.example"\n', 2, "scheme"),
        ('[[registry]]\nlocation = "a.example"\nmirrors = []\n', 3, "unknown key 'mirrors'"),
        (
            '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m"\n'
            'pull-from-mirror = "sometimes"\n',
            5,
            "pull-from-mirror must be one of",
        ),
        ("[registries.search]\nregistries = ['docker.io']\n", 1, "version 1"),
        ('unqualified-search-registries = "docker.io"\n', 1, "must be a list"),
        ('[aliases]\n"x.example/y" = "docker.io/library/y"\n', 2, "short name"),
        ('[aliases]\n"y" = "y"\n', 2, "must name its registry"),
        ('short-name-mode = "prompt"\n', 1, "short-name-mode"),
        ('a = 1\n[[registry]\nlocation = "x"\n', 2, "not valid TOML"),
        ('version = "1"\n', 1, "version"),
    ],
)
def test_malformed_is_one_line_with_file_and_line(tmp_path, text, line, complaint):
    path = write(tmp_path, "registries.conf", text)
    with pytest.raises(ConfigFileError) as raised:
        load_files(path, True, [])
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert complaint in message and "\n" not in message


def test_named_file_must_exist_default_may_not(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_files(tmp_path / "missing.conf", True, [])
    assert load_files(tmp_path / "missing.conf", False, [tmp_path / "nodir"]) == RegistriesConf()


def test_standard_paths_follow_containers_image(tmp_path):
    home = {"XDG_CONFIG_HOME": str(tmp_path)}
    user = tmp_path / "containers"
    main, required, dirs = standard_paths(None, home)
    assert main == registries_conf.SYSTEM_REGISTRIES_CONF and not required
    assert dirs == (registries_conf.SYSTEM_DROP_IN_DIR, user / "registries.conf.d")
    write(user, "registries.conf", "")
    assert standard_paths(None, home) == (
        user / "registries.conf",
        False,
        (user / "registries.conf.d",),
    )
    named = {**home, "CONTAINERS_REGISTRIES_CONF": "/x.conf", "OCCYSTRAP_REGISTRIES_CONF_D": ""}
    assert standard_paths(None, named) == (Path("/x.conf"), True, ())
    assert standard_paths(Path("/y.conf"), named)[0] == Path("/y.conf")


@given(st.text(max_size=300))
def test_any_text_is_a_configuration_or_one_line(text):
    try:
        registries_conf.parse_document(*_parsed(text))
    except ConfigFileError as exc:
        assert "\n" not in str(exc)
    except _NotToml:
        pass


class _NotToml(Exception):
    pass


def _parsed(text):
    import tomllib

    try:
        return tomllib.loads(text), text, Path("f.conf")
    except tomllib.TOMLDecodeError:
        raise _NotToml from None


ENTRY_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "prefix": st.sampled_from(["a.example", "a.example/x", "*.example", "", "h:99999"]),
        "location": st.sampled_from(["b.example", "b.example/y", "http://c", "", 7]),
        "insecure": st.sampled_from([True, False, "yes"]),
        "blocked": st.booleans(),
        "mirror": st.lists(
            st.fixed_dictionaries(
                {"location": st.sampled_from(["m.example", "m.example/ns", ""])},
                optional={
                    "pull-from-mirror": st.sampled_from(PULLS := ["all", "digest-only", "x"])
                },
            ),
            max_size=2,
        ),
    },
)


@given(st.lists(ENTRY_VALUES, max_size=3))
def test_generated_entries_parse_or_fail_in_one_line(entries):
    try:
        settings = registries_conf.parse_document({"registry": entries}, "", Path("f.conf"))
    except ConfigFileError as exc:
        assert str(exc).startswith("f.conf:") and "\n" not in str(exc)
        return
    for entry in settings.registries:
        assert entry.prefix and entry.location and "://" not in entry.location


@given(
    st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.sampled_from(["", ":v1", "@sha256:" + "b" * 64, ":v1@sha256:" + "c" * 64]),
)
def test_split_name_round_trips(name, suffix):
    assert split_name(name + suffix) == (name, suffix)


def test_registry_uris_are_resolved_with_the_active_configuration(tmp_path):
    from occystrap.endpoints import parse_uri

    conf = conf_of(tmp_path, EXAMPLE)
    with registries_conf.activated(conf):
        aliased = parse_uri("registry://app:v1")
        rewritten = parse_uri("registry://old.example/team/x@sha256:" + "e" * 64)
        explicit = parse_uri("registry://old.example/team/x?insecure=false")
        with pytest.raises(UsageError, match="blocked by"):
            parse_uri("registry://evil.example/a")
        with pytest.raises(UsageError, match="ambiguous"):
            parse_uri("registry://alpine")
    assert str(aliased.reference) == "registry.example/apps/app:v1"
    assert rewritten.reference.registry == "new.example:8443"
    assert rewritten.insecure is None and explicit.insecure is False
    assert registries_conf.active() == RegistriesConf()
    with pytest.raises(UsageError, match="expected HOST"):
        parse_uri("registry://app")


def test_a_short_name_pinned_by_digest_is_not_taken_for_credentials():
    """`registry://alpine@sha256:...` has an `@` where `USER@HOST` would; it names an image,
    while `USER:PASSWORD@HOST` is still refused (test_bad_inputs)."""
    digest = "sha256:" + "a" * 64
    with registries_conf.activated(RegistriesConf(unqualified_search_registries=("docker.io",))):
        uri = parse_uri(f"registry://alpine@{digest}")
        assert str(uri.reference) == f"registry-1.docker.io/library/alpine@{digest}"
        for text in ("registry://u:pw@h.example", f"registry://u:pw@h.example/a@{digest}"):
            with pytest.raises(UsageError, match="credentials in the URI"):
                parse_uri(text)
