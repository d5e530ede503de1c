"""Deeply nested JSON from every untrusted source: registries' tag lists, error bodies and
token answers, Quay pages and the Docker daemon. Each is one line through the real CLI (or
the endpoint), never a RecursionError traceback. Files are in test_bad_inputs' battery."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occystrap.jsondoc import MAX_DEPTH, BadJSONError, TooDeepJSONError, parse_json

from .cli_runner import run_cli
from .test_docker_endpoint import _PlainWebServer, serving

NESTED = b"[" * 100_000
REGISTRY = "https://registry.test"


def test_a_nested_tag_list_is_one_line(mock):
    mock.get(url__startswith=f"{REGISTRY}/v2/team/app/tags/list").respond(200, content=NESTED)
    run_cli("--retries", "0", "tags", "registry://registry.test/team/app").assert_one_line_error(
        "not a tags list"
    )


def test_a_nested_error_body_is_one_line(mock):
    mock.get(url__startswith=f"{REGISTRY}/v2/team/app/manifests/").respond(404, content=NESTED)
    run_cli("--retries", "0", "info", "registry://registry.test/team/app:v1").assert_one_line_error(
        "HTTP 404"
    )


def test_a_nested_token_answer_is_one_line(mock):
    challenge = f'Bearer realm="{REGISTRY}/token",service="registry.test"'
    mock.get(url__startswith=f"{REGISTRY}/v2/team/app/manifests/").respond(
        401, headers={"WWW-Authenticate": challenge}
    )
    mock.get(url__startswith=f"{REGISTRY}/token").respond(200, content=NESTED)
    run_cli("--retries", "0", "info", "registry://registry.test/team/app:v1").assert_one_line_error(
        "token"
    )


def test_a_nested_quay_page_is_one_line(mock):
    mock.get(url__startswith="https://quay.test/api/v1/").respond(200, content=NESTED)
    run_cli("--retries", "0", "info", "quay://kolla?host=quay.test").assert_one_line_error(
        "not a JSON object"
    )


class _NestedDaemon(_PlainWebServer):
    """Answers /_ping as a daemon does, then describes every image with nested JSON."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Api-Version", "1.41")
        body = b"OK" if self.path == "/_ping" else NESTED
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_nested_daemon_image_json_is_one_line(tmp_path):
    path = tmp_path / "nested.sock"
    with serving(path, _NestedDaemon):
        outcome = run_cli("info", f"docker://team/app:v1?socket={path}")
    outcome.assert_one_line_error("not a JSON object")


# -- the parser itself --------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a":', '[{"a":'])
def test_nesting_past_the_limit_is_refused_before_parsing(opening):
    with pytest.raises(TooDeepJSONError, match="the tag list is not valid JSON: it nests deeper"):
        parse_json(opening * 200_000, "the tag list")


def test_nesting_at_the_limit_parses():
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"k": "[" * 500 + '\\"' + "{" * 500})
    assert parse_json(text) == json.loads(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=20,
    )
)
def test_any_shallow_document_parses_as_json_would(document):
    text = json.dumps(document)
    assert parse_json(text.encode()) == json.loads(text)


@given(st.binary(max_size=64) | st.text(alphabet='[]{}",:0', max_size=300).map(str.encode))
def test_any_bytes_parse_or_are_a_bad_json_error(data):
    try:
        parse_json(data)
    except BadJSONError as error:
        assert "\n" not in str(error)
