"""Sync files and tag selection: our YAML, skopeo's, filters and version ranges."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from occystrap.errors import UsageError
from occystrap.sync.config import parse_spec
from occystrap.sync.tags import TagFilter

TAGS = ["3.17.1", "3.18.0", "3.18.4", "3.19.0-rc1", "3.19.0", "3.20.1", "latest", "4.0.0"]


def test_allow_deny_semver_and_latest_compose():
    chosen = TagFilter(allow=(r"^3\.",), deny=("-rc",), semver=">=3.18", latest=2)
    assert chosen.select(TAGS) == ["3.19.0", "3.20.1"]


@pytest.mark.parametrize(
    ("semver", "expected"),
    [
        (">=3.18,<3.20", ["3.18.0", "3.18.4", "3.19.0"]),
        (">= 3.18.0 < 3.19", ["3.18.0", "3.18.4"]),
        ("^3.18", ["3.18.0", "3.18.4", "3.19.0", "3.20.1"]),
        ("~3.18", ["3.18.0", "3.18.4"]),
        ("3.17.x || >=4", ["3.17.1", "4.0.0"]),
    ],
)
def test_version_ranges_in_pep440_and_semver_forms(semver, expected):
    assert TagFilter(semver=semver).select(TAGS) == expected


def test_a_range_drops_tags_that_are_not_versions_and_prereleases():
    assert "latest" not in TagFilter(semver=">=0").select(TAGS)
    assert "3.19.0-rc1" not in TagFilter(semver=">=3").select(TAGS)


@pytest.mark.parametrize("bad", ["banana", ">=", "3.18 ||| 4"])
def test_a_bad_range_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="version range"):
        TagFilter(semver=bad)


@given(st.lists(st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True)))
@example(["0.0.00", "0.0.0", "0.0.1", "0.0.2"])  # one version spelled two ways
def test_latest_keeps_the_highest_versions(tags):
    from packaging.version import Version

    chosen = TagFilter(latest=3).select(tags)
    highest = sorted({Version(t) for t in tags}, reverse=True)[:3]
    # the three highest versions, each with every tag spelling it, in the registry's order
    assert chosen == [t for t in dict.fromkeys(tags) if Version(t) in highest]


def test_our_file_with_defaults():
    spec = parse_spec(
        {
            "defaults": {"referrers": True, "platforms": ["linux/amd64"]},
            "sync": [
                {"source": "registry://a/b", "target": "registry://c/b", "tags": {"latest": 2}}
            ],
        },
        "f.yaml",
    )
    (rule,) = spec.rules
    assert rule.referrers and [str(p) for p in rule.platforms] == ["linux/amd64"]
    assert rule.tags.latest == 2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"sync": []}, "non-empty list"),
        ({"sync": [{"source": "registry://a/b"}]}, "has no target"),
        ({"sync": [{"source": "a", "target": "b", "tag": {}}]}, "unknown key 'tag'"),
        ({"sync": [{"source": "a", "target": "b", "tags": {"latest": "x"}}]}, "whole number"),
        ({"registry.example": {"images": {"x": []}}}, "--dest"),
    ],
)
def test_bad_files_say_what_is_wrong(document, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(document, "f.yaml")


def test_skopeo_file_names_targets_as_skopeo_does():
    document = {
        "docker.io": {
            "images": {"busybox": ["1.36"], "team/app": []},
            "images-by-tag-regex": {"nginx": "^1\\.2"},
            "images-by-semver": {"alpine": ">= 3.12.0"},
            "credentials": {"username": "u", "password": "p"},
        },
        "localhost:5000": {"tls-verify": False, "images": {"a/b/c": ["x"]}},
    }
    plain = parse_spec(document, "s.yaml", "registry://mirror:5000/m")
    pairs = [(r.source, r.target) for r in plain.rules]
    assert pairs == [
        ("registry://registry-1.docker.io/library/busybox", "registry://mirror:5000/m/busybox"),
        ("registry://registry-1.docker.io/team/app", "registry://mirror:5000/m/app"),
        ("registry://registry-1.docker.io/library/nginx", "registry://mirror:5000/m/nginx"),
        ("registry://registry-1.docker.io/library/alpine", "registry://mirror:5000/m/alpine"),
        ("registry://localhost:5000/a/b/c?insecure=true", "registry://mirror:5000/m/c"),
    ]
    assert plain.rules[0].tags.exact == ("1.36",) and not plain.rules[1].tags.exact
    assert plain.rules[3].tags.select(["3.12.1", "3.13", "v3.14.0", "3.11.0"]) == ["3.12.1"]
    assert plain.credentials["registry-1.docker.io"].username == "u"
    scoped = parse_spec(document, "s.yaml", "registry://mirror:5000/m", scoped=True)
    assert scoped.rules[0].target == "registry://mirror:5000/m/docker.io/library/busybox"
