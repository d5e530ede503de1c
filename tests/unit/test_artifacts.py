"""Artifact titles never lead outside the pull directory; FILE[:MEDIATYPE] arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.artifacts import ArtifactFile, parse_annotation, parse_file_argument, safe_title
from occystrap.errors import OccystrapError, UsageError

DIRECTORY = Path("/srv/pull")


@given(st.text(alphabet=st.sampled_from("./\\\0ab-"), max_size=12))
def test_a_title_is_refused_or_lands_inside_the_directory(title):
    try:
        target = safe_title(title, DIRECTORY)
    except OccystrapError:
        return
    assert target.is_relative_to(DIRECTORY) and target != DIRECTORY
    assert ".." not in target.parts


@pytest.mark.parametrize(
    "title", ["../x", "a/../../x", "/etc/passwd", "", ".", "a/./b", "a\\..\\b"]
)
def test_hostile_titles(title):
    with pytest.raises(OccystrapError, match="outside"):
        safe_title(title, DIRECTORY)


def test_nested_titles_stay_nested():
    assert safe_title("docs/readme.md", DIRECTORY) == DIRECTORY / "docs" / "readme.md"


def test_file_arguments():
    assert parse_file_argument("a.json:application/json") == ArtifactFile(
        Path("a.json"), "application/json"
    )
    assert parse_file_argument("c:notatype").path == Path("c:notatype")
    assert parse_file_argument("plain.bin").media_type == "application/octet-stream"
    assert parse_annotation("k=v=w") == ("k", "v=w")
    with pytest.raises(UsageError):
        parse_annotation("novalue")
