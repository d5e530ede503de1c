"""quay:// end to end: a fake Quay API in front of the real registry, the whole chain, skopeo."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.images import (
    build_oci_layout,
    push_with_skopeo,
    random_layer,
    skopeo_inspect,
)
from tests.integration.quay_api import FakeQuay, FakeRepository

pytestmark = pytest.mark.integration

ORG = "kolla"
JAN_2023 = 1_672_531_200
JUL_2024 = 1_719_792_000
SEEDED = {  # repository -> tags pushed to the registry
    "nova-api": ["2024.1"],
    "nova-compute": ["2024.1"],
    "glance-api": ["2024.1"],
    "keystone": ["latest"],
    "nova-scheduler": ["2024.1"],
}


@pytest.fixture(scope="module")
def seeded_quay(registry_plain, tmp_path_factory) -> Iterator[FakeQuay]:
    workdir = tmp_path_factory.mktemp("quay-layouts")
    shared_layer = random_layer(200_000, 7)
    images = [(f"{ORG}/{name}", tag) for name, tags in SEEDED.items() for tag in tags]
    for repository, tag in [*images, ("aged/fresh", "2024.1")]:
        # A layer of its own gives each image its own config, as separate images have.
        layout = workdir / repository.replace("/", "_")
        build_oci_layout(layout, [shared_layer, {"etc/image": repository.encode()}])
        push_with_skopeo(layout, registry_plain, repository, tag)
    with FakeQuay(registry_plain.url) as quay:
        yield quay


@pytest.fixture
def quay(seeded_quay: FakeQuay) -> Iterator[FakeQuay]:
    """The seeded fake Quay with this test's own settings, restored afterwards."""
    seeded_quay.reset()
    seeded_quay.organisations = {
        ORG: {
            name: FakeRepository({tag: JUL_2024 for tag in tags}, JUL_2024)
            for name, tags in SEEDED.items()
        },
        "aged": {
            "stale": FakeRepository({"2024.1": JAN_2023}, JAN_2023),
            "old-tag": FakeRepository({"2024.1": JAN_2023}, JUL_2024),
            "fresh": FakeRepository({"2024.1": JUL_2024}, JUL_2024),
        },
    }
    yield seeded_quay
    seeded_quay.page_size, seeded_quay.token, seeded_quay.tag_check_delay = 2, None, 0.0


def _uri(quay: FakeQuay, selection: str, **options: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"host": quay.host, **options}.items())
    return f"quay://{selection}?{query}"


def _info_json(quay: FakeQuay, selection: str, *flags: str, **options: str) -> list[dict]:
    result = run_occystrap(
        "--insecure", *flags, "-O", "json", "info", _uri(quay, selection, **options)
    )
    return json.loads(result.stdout)


def _names(quay: FakeQuay, details: list[dict]) -> list[str]:
    return [entry["image"].removeprefix(f"{quay.host}/") for entry in details]


def test_info_json_names_each_matching_image(quay, registry_plain):
    details = _info_json(quay, f"{ORG}/nova-*:2024.1")
    assert _names(quay, details) == [
        f"{ORG}/nova-api:2024.1",
        f"{ORG}/nova-compute:2024.1",
        f"{ORG}/nova-scheduler:2024.1",
    ]
    digest = skopeo_inspect(registry_plain, f"{ORG}/nova-api:2024.1")["Digest"]
    assert details[0]["manifest_digest"] == digest
    assert [layer["diff_id"] for layer in details[0]["layers"]]


def test_info_text_prints_a_section_per_image(quay):
    result = run_occystrap("--insecure", "info", _uri(quay, f"{ORG}/*-api:2024.1"))
    image_lines = [line for line in result.stdout.splitlines() if line.startswith("image:")]
    assert image_lines == [
        f"image:           {quay.host}/{ORG}/nova-api:2024.1",
        f"image:           {quay.host}/{ORG}/glance-api:2024.1",
    ]


def test_tag_filter_skips_repositories_without_the_tag(quay):
    assert _names(quay, _info_json(quay, ORG)) == [f"{ORG}/keystone:latest"]
    tag_checks = quay.api_requests("repository/kolla/")
    assert len(tag_checks) == len(SEEDED)
    assert all(
        query == {"specificTag": ["latest"], "onlyActiveTags": ["true"], "limit": ["1"]}
        for _, query in tag_checks
    )


def test_no_match_is_not_an_error(quay):
    assert _info_json(quay, f"{ORG}/swift-*") == []
    result = run_occystrap("--insecure", "info", _uri(quay, f"{ORG}/swift-*"))
    assert "no image matches" in result.stdout


def test_listing_follows_every_page(quay):
    quay.page_size = 2
    details = _info_json(quay, f"{ORG}/*:2024.1")
    assert len(_names(quay, details)) == 4
    listings = quay.api_requests(r"repository\?")
    assert [query.get("next_page") for _, query in listings] == [None, ["page-2"], ["page-4"]]
    assert all(query["namespace"] == [ORG] for _, query in listings)


def test_since_drops_old_repositories_and_old_tags(quay):
    details = _info_json(quay, "aged/*:2024.1", since="2024-06-01")
    assert _names(quay, details) == ["aged/fresh:2024.1"]
    listing_query = quay.api_requests(r"repository\?")[0][1]
    assert listing_query["last_modified"] == ["true"]
    checked = sorted(path for path, _ in quay.api_requests("repository/aged/"))
    # The stale repository was dropped while listing, without a tag check.
    assert checked == ["/api/v1/repository/aged/fresh/tag/", "/api/v1/repository/aged/old-tag/tag/"]
    quay.reset()
    assert _names(quay, _info_json(quay, "aged/fresh:2024.1")) == ["aged/fresh:2024.1"]
    assert "last_modified" not in quay.api_requests(r"repository\?")[0][1]


def test_tag_checks_run_in_parallel(quay):
    quay.tag_check_delay = 0.3
    _info_json(quay, f"{ORG}/*:2024.1", "-j", "5")
    assert quay.max_tag_checks_at_once >= 3


def test_token_required(quay):
    quay.token = "quay-api-secret"
    result = run_occystrap("--insecure", "info", _uri(quay, ORG), check=False)
    assert_one_line_error(result, "Quay API token", "--quay-token")
    assert _info_json(quay, ORG, "--quay-token", "quay-api-secret")
    assert _info_json(quay, ORG, token="quay-api-secret")
    env_result = run_occystrap(
        "--insecure", "info", _uri(quay, ORG), env={"OCCYSTRAP_QUAY_TOKEN": "quay-api-secret"}
    )
    assert "keystone" in env_result.stdout
    registry_calls = quay.requests_matching("^/v2/")
    assert registry_calls
    assert all("quay-api-secret" not in str(r.headers) for r in registry_calls)


def test_process_into_a_shared_directory(quay, tmp_path):
    out = tmp_path / "images"
    result = run_occystrap(
        "--insecure",
        "process",
        _uri(quay, f"{ORG}/nova-*:2024.1"),
        f"dir://{out}?unique_names=true",
    )
    catalogue = json.loads((out / "manifest.json").read_text())
    tags = sorted(tag for entry in catalogue for tag in entry["RepoTags"])
    assert tags == sorted(
        f"{quay.host}/{ORG}/{name}:2024.1"
        for name in ("nova-api", "nova-compute", "nova-scheduler")
    )
    assert "3 images ok, 0 failed" in result.stderr


def test_search_looks_through_every_image_it_names(quay):
    result = run_occystrap(
        "--insecure", "search", "--script-friendly", _uri(quay, f"{ORG}/*-api:2024.1"), "image"
    )
    hits = result.stdout.splitlines()
    assert len(hits) == 2, hits
    for line, name in zip(hits, ("nova-api", "glance-api"), strict=True):
        layer = r"sha256:[0-9a-f]{64}"
        assert re.fullmatch(rf"{quay.host}/{ORG}/{name}:2024\.1:{layer}:/etc/image", line), line
    assert "2 paths match in 2 images (4 layers searched)" in result.stderr


def test_filters_run_on_every_image_of_a_bulk_copy(quay, tmp_path):
    record = tmp_path / "inspect.jsonl"
    run_occystrap(
        "--insecure",
        "process",
        _uri(quay, f"{ORG}/nova-*:2024.1"),
        f"dir://{tmp_path / 'images'}?unique_names=true",
        "-f",
        "exclude:pattern=/etc/image",
        "-f",
        f"inspect:file={record}",
    )
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(line["image"] for line in lines) == [
        f"{quay.host}/{ORG}/{name}" for name in ("nova-api", "nova-compute", "nova-scheduler")
    ]
    assert all(line["manifest_digest"] is None for line in lines)  # every image was rewritten


def test_process_into_a_registry_keeps_org_under_the_prefix(quay, registry_plain, unique_repo):
    run_occystrap(
        "--insecure",
        "process",
        "-J",
        "2",
        _uri(quay, f"{ORG}/*-api:2024.1"),
        f"registry://{registry_plain.host}/{unique_repo}",
    )
    for name in ("nova-api", "glance-api"):
        copied = skopeo_inspect(registry_plain, f"{unique_repo}/{ORG}/{name}:2024.1")
        original = skopeo_inspect(registry_plain, f"{ORG}/{name}:2024.1")
        assert copied["Digest"] == original["Digest"]


def test_one_failed_image_does_not_stop_the_others(quay, registry_plain, unique_repo):
    # Listed by the API, but never pushed to the registry.
    quay.organisations[ORG]["nova-conductor"] = FakeRepository({"2024.1": JUL_2024}, JUL_2024)
    result = run_occystrap(
        "--insecure",
        "process",
        _uri(quay, f"{ORG}/nova-*:2024.1"),
        f"registry://{registry_plain.host}/{unique_repo}",
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"{ORG}/nova-conductor:2024.1 failed" in result.stderr
    assert "3 images ok, 1 failed" in result.stderr
    assert "Traceback" not in result.stderr
    for name in ("nova-api", "nova-compute", "nova-scheduler"):
        assert skopeo_inspect(registry_plain, f"{unique_repo}/{ORG}/{name}:2024.1")["Digest"]


@pytest.mark.parametrize(
    "destination",
    ["tar://{tmp}/one.tar", "dir://{tmp}/one", "registry://{registry}/prefix:tag"],
)
def test_single_image_destinations_are_refused_before_any_call(
    quay, registry_plain, tmp_path, destination
):
    target = destination.format(tmp=tmp_path, registry=registry_plain.host)
    result = run_occystrap("--insecure", "process", _uri(quay, ORG), target, check=False)
    assert_one_line_error(result, "unique_names=true", "registry://HOST/PREFIX")
    assert quay.requests == []
