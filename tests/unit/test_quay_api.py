"""Quay discovery: glob matching, since cut-offs, paging and tag checks through the real chain."""

from __future__ import annotations

import datetime
import threading

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from occystrap.bulk import ImageProgress, run_each
from occystrap.cancel import Cancellation
from occystrap.endpoints import parse_uri
from occystrap.endpoints.registry import RegistryURI
from occystrap.errors import OccystrapError, QuayAuthError, UsageError
from occystrap.library import check_many_destination
from occystrap.middleware.builder import ChainSettings, build_client
from occystrap.middleware.options import NetworkSettings
from occystrap.quay.api import (
    QuayAPIError,
    QuayClient,
    QuayImage,
    api_base,
    find_images,
    is_older,
    matches_glob,
    since_timestamp,
)

from .cli_runner import run_cli

BASE = "https://quay.test/api/v1"
TOKEN = "quay-secret"
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=30)


def _client(retries: int = 0) -> httpx.Client:
    return build_client(
        ChainSettings(NetworkSettings(retries=retries, quay_token=TOKEN), quay_api_base=BASE)
    )


# -- glob and since -------------------------------------------------------------------------


@given(NAMES)
def test_a_name_matches_itself_and_star(name):
    assert matches_glob(name, name)
    assert matches_glob(name, "*")


@given(NAMES, NAMES)
def test_prefix_glob_matches_exactly_the_names_with_that_prefix(prefix, name):
    assert matches_glob(name, prefix + "*") == name.startswith(prefix)


@pytest.mark.parametrize(
    ("name", "glob", "expected"),
    [
        ("nova-api", "nova-*", True),
        ("nova-api", "*-api", True),
        ("glance-api", "nova-*", False),
        ("nova-api", "nova-ap?", True),
        ("nova-api", "nova-[ab]pi", True),
        ("nova-api", "nova-[!a]pi", False),
        ("Nova-api", "nova-*", False),
    ],
)
def test_glob_examples(name, glob, expected):
    assert matches_glob(name, glob) is expected


def test_since_is_midnight_utc():
    assert since_timestamp(datetime.date(2024, 7, 1)) == 1_719_792_000
    assert since_timestamp(None) is None


@given(st.dates(min_value=datetime.date(1971, 1, 1)), st.integers(-86_400 * 3, 86_400 * 3))
def test_is_older_compares_with_the_start_of_the_day(day, offset):
    cutoff = since_timestamp(day)
    assert is_older(cutoff + offset, cutoff) is (offset < 0)


@pytest.mark.parametrize("unknown", [None, "yesterday", True])
def test_unknown_times_are_never_too_old(unknown):
    assert not is_older(unknown, 1e9)
    assert not is_older(0, None)


def test_since_from_the_uri():
    uri = parse_uri("quay://kolla/nova-*:2024.1?since=2024-07-01&host=quay.example.org")
    assert since_timestamp(uri.since) == 1_719_792_000
    assert api_base(uri.host, False) == "https://quay.example.org/api/v1"
    assert api_base(uri.host, True) == "http://quay.example.org/api/v1"


# -- listing and tags over the chain --------------------------------------------------------


def _page(names: list[str], next_page: str | None = None, modified: int | None = None) -> dict:
    entries = [{"namespace": "kolla", "name": name, "last_modified": modified} for name in names]
    return {"repositories": entries, **({"next_page": next_page} if next_page else {})}


def test_listing_follows_next_page_with_the_same_query():
    pages = {
        None: _page(["a", "b"], "tok-2"),
        "tok-2": _page(["c", "d"], "tok-3"),
        "tok-3": _page(["e"]),
    }
    with respx.mock(using="httpcore") as mock:
        route = mock.get(f"{BASE}/repository").mock(
            side_effect=lambda request: httpx.Response(
                200, json=pages[request.url.params.get("next_page")]
            )
        )
        with _client() as http:
            names = list(QuayClient(http, BASE).repositories("kolla"))
    assert names == ["a", "b", "c", "d", "e"]
    sent = [call.request for call in route.calls]
    assert [r.url.params.get("next_page") for r in sent] == [None, "tok-2", "tok-3"]
    assert all(r.url.params["namespace"] == "kolla" for r in sent)
    assert all(r.url.params["public"] == "true" for r in sent)
    assert all("last_modified" not in r.url.params for r in sent)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sent)


def test_a_repeated_page_stops_the_listing():
    with respx.mock(using="httpcore") as mock:
        mock.get(f"{BASE}/repository").respond(200, json=_page(["a"], "same"))
        with _client() as http, pytest.raises(QuayAPIError, match="repeated a page"):
            list(QuayClient(http, BASE).repositories("kolla"))


def test_listing_since_asks_for_last_modified_and_drops_old_repositories():
    since = datetime.date(2024, 7, 1)
    document = {
        "repositories": [
            {"name": "old", "last_modified": 1_719_791_999},
            {"name": "new", "last_modified": 1_719_792_000},
            {"name": "unknown", "last_modified": None},
        ]
    }
    with respx.mock(using="httpcore") as mock:
        route = mock.get(f"{BASE}/repository").respond(200, json=document)
        with _client() as http:
            names = list(QuayClient(http, BASE).repositories("kolla", since))
    assert names == ["new", "unknown"]
    assert route.calls.last.request.url.params["last_modified"] == "true"


@pytest.mark.parametrize(
    ("status", "body", "since", "expected"),
    [
        (200, {"tags": [{"name": "2024.1", "start_ts": 1_719_792_000}]}, None, True),
        (200, {"tags": [{"name": "2024.1", "start_ts": 1_600_000_000}]}, None, True),
        (200, {"tags": [{"name": "2024.1", "start_ts": 1_600_000_000}]}, "2024-07-01", False),
        (200, {"tags": [{"name": "2024.1", "start_ts": 1_719_792_000}]}, "2024-07-01", True),
        (200, {"tags": []}, None, False),
        (200, {"tags": [{"name": "other"}]}, None, False),
        (404, {"error": "not found"}, None, False),
    ],
)
def test_tag_check(status, body, since, expected):
    since_date = datetime.date.fromisoformat(since) if since else None
    with respx.mock(using="httpcore") as mock:
        route = mock.get(f"{BASE}/repository/kolla/nova-api/tag/").respond(status, json=body)
        with _client() as http:
            found = QuayClient(http, BASE).has_tag("kolla", "nova-api", "2024.1", since_date)
    assert found is expected
    params = route.calls.last.request.url.params
    assert dict(params) == {"specificTag": "2024.1", "onlyActiveTags": "true", "limit": "1"}


def test_401_is_the_token_advice():
    with respx.mock(using="httpcore") as mock:
        mock.get(f"{BASE}/repository").respond(401, json={"error": "invalid_token"})
        with _client() as http, pytest.raises(QuayAuthError, match="--quay-token"):
            list(QuayClient(http, BASE).repositories("kolla"))


@pytest.mark.parametrize(
    ("status", "content", "message"),
    [
        (500, b"{}", "HTTP 500"),
        (200, b"<html>", "not a JSON object"),
        (200, b"[]", "not a JSON object"),
        (404, b"{}", "no organisation 'kolla'"),
    ],
)
def test_api_failures_are_one_line_errors(status, content, message):
    with respx.mock(using="httpcore") as mock:
        mock.get(f"{BASE}/repository").respond(status, content=content)
        with _client() as http, pytest.raises(QuayAPIError, match=message) as caught:
            list(QuayClient(http, BASE).repositories("kolla"))
    assert "\n" not in str(caught.value)


def test_server_errors_are_retried_by_the_chain():
    with respx.mock(using="httpcore") as mock:
        route = mock.get(f"{BASE}/repository")
        route.side_effect = [httpx.Response(503), httpx.Response(200, json=_page(["a"]))]
        with build_client(ChainSettings(NetworkSettings(retries=1), quay_api_base=BASE)) as http:
            assert list(QuayClient(http, BASE).repositories("kolla")) == ["a"]
    assert route.call_count == 2


def test_find_images_filters_by_glob_and_tag_checking_in_parallel():
    in_flight, most = 0, 0
    lock, all_started = threading.Lock(), threading.Barrier(3, timeout=5)

    def tag_answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        all_started.wait()  # only passes if three checks are in flight together
        with lock:
            in_flight -= 1
        has_tag = "compute" not in request.url.path
        return httpx.Response(200, json={"tags": [{"name": "2024.1"}] if has_tag else []})

    names = ["nova-api", "glance-api", "nova-compute", "nova-scheduler"]
    uri = parse_uri("quay://kolla/nova-*:2024.1?host=quay.test")
    with respx.mock(using="httpcore") as mock:
        mock.get(f"{BASE}/repository").respond(200, json=_page(names))
        tags = mock.route(path__regex=r"/tag/$").mock(side_effect=tag_answer)
        with _client() as http:
            images = find_images(QuayClient(http, BASE), uri, parallel=3)
    assert [str(image) for image in images] == [
        "quay.test/kolla/nova-api:2024.1",
        "quay.test/kolla/nova-scheduler:2024.1",
    ]
    assert tags.call_count == 3  # glance-api never checked
    assert most == 3


# -- many images ----------------------------------------------------------------------------


def _image(name: str) -> QuayImage:
    return QuayImage("quay.io", "kolla", name, "2024.1")


def test_one_failure_does_not_stop_the_others():
    done = []

    def job(image: QuayImage) -> None:
        if image.repository == "bad":
            raise OccystrapError("manifest unknown")
        if image.repository == "bug":
            raise KeyError("x")
        done.append(image.repository)

    images = [_image(name) for name in ("a", "bad", "b", "bug", "c")]
    errors = run_each(images, job, parallel=2, cancellation=Cancellation())
    assert sorted(done) == ["a", "b", "c"]
    outcome = list(zip(images, errors, strict=True))
    assert [image.repository for image, error in outcome if error is None] == ["a", "b", "c"]
    assert [(image.repository, error) for image, error in outcome if error is not None] == [
        ("bad", "manifest unknown"),
        ("bug", "KeyError: 'x'"),
    ]


def test_image_progress_keeps_images_apart():
    calls = []

    class Recorder:
        def start(self, key, total, label):
            calls.append(("start", key, label))

        def advance(self, key, nbytes):
            calls.append(("advance", key, nbytes))

        def restart(self, key, completed):
            calls.append(("restart", key, completed))

        def finish(self, key):
            calls.append(("finish", key))

    for name in ("nova-api", "glance-api"):
        progress = ImageProgress(Recorder(), RegistryURI(_image(name).reference))
        progress.start("sha256:abc", 10, "abc")
        progress.finish("sha256:abc")
    keys = {call[1] for call in calls}
    assert keys == {
        "quay.io/kolla/nova-api:2024.1|sha256:abc",
        "quay.io/kolla/glance-api:2024.1|sha256:abc",
    }


# -- destinations ---------------------------------------------------------------------------


def test_registry_destination_keeps_org_under_the_prefix():
    destination = parse_uri("registry://mirror.example:5000/team/mirror?insecure=true")
    target = destination.destination_for(RegistryURI(_image("nova-api").reference))
    assert str(target.reference) == "mirror.example:5000/team/mirror/kolla/nova-api:2024.1"
    assert target.insecure is True


def test_shared_directory_destination_is_used_as_is():
    destination = parse_uri("dir:///tmp/images?unique_names=true")
    assert destination.destination_for(RegistryURI(_image("nova-api").reference)) is destination


@pytest.mark.parametrize(
    "text",
    [
        "tar:///tmp/one.tar",
        "dir:///tmp/one",
        "registry://mirror.example/prefix:v1",
        "registry://mirror.example:5000/prefix:v1",
        f"registry://mirror.example/prefix@sha256:{'a' * 64}",
        "quay://other",
    ],
)
def test_single_image_destinations_are_refused(text):
    with pytest.raises(UsageError, match="unique_names=true"):
        check_many_destination(parse_uri(text))


@pytest.mark.parametrize(
    "text", ["dir:///tmp/many?unique_names=true", "registry://mirror.example:5000/prefix"]
)
def test_many_image_destinations_are_accepted(text):
    check_many_destination(parse_uri(text))


@pytest.mark.parametrize(
    "page",
    [
        {"repositories": "oops"},
        {"nothing": []},
        {"repositories": [{"name": 7}]},
        {"repositories": [None]},
    ],
)
def test_a_malformed_repository_page_is_an_error_not_no_match(page):
    """Not "no image matches" with exit 0: the answer is not what Quay sends."""
    with respx.mock(using="httpcore") as mock:
        mock.get(url__startswith="https://quay.test/api/v1/repository").respond(json=page)
        outcome = run_cli("--retries", "0", "info", "quay://kolla?host=quay.test")
    outcome.assert_one_line_error("has no list of named repositories")


def test_a_malformed_tag_page_is_an_error():
    with respx.mock(using="httpcore") as mock:
        mock.get(url__startswith="https://quay.test/api/v1/repository/kolla/").respond(
            json={"tags": "latest"}
        )
        mock.get(url__startswith="https://quay.test/api/v1/repository").respond(
            json={"repositories": [{"name": "nova"}]}
        )
        outcome = run_cli("--retries", "0", "info", "quay://kolla?host=quay.test")
    outcome.assert_one_line_error("has no list of named tags")
