"""registries.conf and the config file against real registries, skopeo as the reference:
mirrors read first (the proxies' logs say so) with fallthrough, insecure, blocked, location
rewrites, digest-only mirrors, short names, each precedence level, one-line errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.integration.cli import assert_one_line_error, run_occystrap
from tests.integration.conftest import BASIC_PASSWORD, BASIC_USERNAME
from tests.integration.fault_proxy import FaultProxy
from tests.integration.images import push_with_skopeo, run_skopeo, skopeo_inspect
from tests.integration.pull_checks import TAG, assert_tar_is_image, seed_image
from tests.integration.signing import SPDX, RegistryReader, RegistryWriter, digest_of
from tests.integration.tag_pages import TagPagingProxy

pytestmark = pytest.mark.integration

MANIFEST_BY_TAG = rf"/manifests/{TAG}$"


@pytest.fixture
def origin(registry_plain):
    """The origin registry, behind a proxy that logs every request."""
    with FaultProxy(registry_plain.url) as proxy:
        yield proxy


@pytest.fixture
def mirror(registry_no_delete):
    """A second loopback registry as the mirror, behind its own logging proxy."""
    with FaultProxy(registry_no_delete.url) as proxy:
        yield proxy


def write_conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    return path


def mirrored(origin_host: str, mirror_host: str, pull: str = "all") -> str:
    return f"""
[[registry]]
prefix = "{origin_host}"
location = "{origin_host}"
insecure = true

[[registry.mirror]]
location = "{mirror_host}"
insecure = true
pull-from-mirror = "{pull}"
"""


def pull(conf: Path, reference: str, out: Path, *flags: str, check: bool = True):
    return run_occystrap(
        "--registries-conf", str(conf), *flags, "process", f"registry://{reference}",
        f"tar://{out}", check=check,
    )  # fmt: skip


def skopeo_digest(conf: Path, reference: str) -> str:
    inspected = run_skopeo(
        "--registries-conf",
        str(conf),
        "inspect",
        "--no-creds",
        "--no-tags",
        f"docker://{reference}",
    )
    return json.loads(inspected.stdout)["Digest"]


def test_mirror_is_read_first_and_the_origin_serves_what_it_lacks(
    origin, mirror, registry_plain, registry_no_delete, unique_repo, tmp_path
):
    on_both, only_origin = f"{unique_repo}-both", f"{unique_repo}-origin"
    seed_image(registry_plain, on_both, tmp_path)
    seed_image(registry_no_delete, on_both, tmp_path)
    seed_image(registry_plain, only_origin, tmp_path)
    conf = write_conf(tmp_path, mirrored(origin.host, mirror.host))

    pull(conf, f"{origin.host}/{on_both}:{TAG}", tmp_path / "both.tar")  # no --insecure
    assert_tar_is_image(tmp_path / "both.tar", registry_plain, on_both)
    assert mirror.requests_matching(MANIFEST_BY_TAG, "GET")
    assert mirror.requests_matching(r"/blobs/sha256:", "GET")
    assert origin.requests_matching(r"/manifests/|/blobs/") == []

    pull(conf, f"{origin.host}/{only_origin}:{TAG}", tmp_path / "origin.tar")
    assert_tar_is_image(tmp_path / "origin.tar", registry_plain, only_origin)
    asked = [r for r in mirror.requests if only_origin in r.path]
    assert asked and asked[0].path.endswith(f"/manifests/{TAG}")  # the mirror first ...
    assert origin.requests_matching(rf"{only_origin}/manifests/{TAG}$")  # ... then the origin


def test_skopeo_reads_the_same_file_to_the_same_image(
    registry_plain, registry_no_delete, unique_repo, tmp_path
):
    """An image only the mirror holds: both tools find it, so both went to the mirror, and
    agree on its digest. (Without the logging proxies: they pass on one Accept header of
    skopeo's several, which makes the registry answer skopeo in schema 1.)"""
    seed_image(registry_no_delete, unique_repo, tmp_path)
    conf = write_conf(tmp_path, mirrored(registry_plain.host, registry_no_delete.host))
    reference = f"{registry_plain.host}/{unique_repo}:{TAG}"
    ours = run_occystrap("--registries-conf", str(conf), "digest", f"registry://{reference}")
    theirs = skopeo_digest(conf, reference)
    assert (
        ours.stdout.strip()
        == theirs
        == skopeo_inspect(registry_no_delete, unique_repo + ":" + TAG)["Digest"]
    )
    pull(conf, reference, tmp_path / "image.tar")
    assert_tar_is_image(tmp_path / "image.tar", registry_no_delete, unique_repo)


def test_digest_only_mirror_is_not_asked_for_tags(
    origin, mirror, registry_plain, registry_no_delete, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    seed_image(registry_no_delete, unique_repo, tmp_path)
    conf = write_conf(tmp_path, mirrored(origin.host, mirror.host, "digest-only"))
    pull(conf, f"{origin.host}/{unique_repo}:{TAG}", tmp_path / "image.tar")
    assert_tar_is_image(tmp_path / "image.tar", registry_plain, unique_repo)
    assert mirror.requests_matching(r"/manifests/") == []
    assert origin.requests_matching(MANIFEST_BY_TAG)
    assert mirror.requests_matching(r"/blobs/sha256:", "GET")  # digests may come from it


def test_insecure_lets_plain_http_work_without_the_flag(registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    image = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    empty = write_conf(tmp_path, "")
    refused = run_occystrap("--registries-conf", str(empty), "digest", image, check=False)
    assert refused.returncode != 0
    conf = write_conf(
        tmp_path, f'[[registry]]\nlocation = "{registry_plain.host}"\ninsecure = true\n'
    )
    digest = run_occystrap("--registries-conf", str(conf), "digest", image).stdout.strip()
    assert digest == skopeo_digest(conf, f"{registry_plain.host}/{unique_repo}:{TAG}")


def test_insecure_tls_registry_is_not_verified(registry_tls, unique_repo, tmp_path):
    """As podman: TLS first, its certificate (signed by a CA nobody gave us) not checked."""
    seed_image(registry_tls, unique_repo, tmp_path)
    image = f"registry://{registry_tls.host}/{unique_repo}:{TAG}"
    refused = run_occystrap(
        "--registries-conf", str(write_conf(tmp_path, "")), "digest", image, check=False
    )
    assert_one_line_error(refused, "not trusted")
    conf = write_conf(
        tmp_path, f'[[registry]]\nlocation = "{registry_tls.host}"\ninsecure = true\n'
    )
    digest = run_occystrap("--registries-conf", str(conf), "digest", image).stdout.strip()
    assert digest == skopeo_inspect(registry_tls, f"{unique_repo}:{TAG}")["Digest"]


def test_blocked_is_refused_before_any_request(origin, unique_repo, tmp_path):
    conf = write_conf(tmp_path, f'\n[[registry]]\nprefix = "{origin.host}/test"\nblocked = true\n')
    out = tmp_path / "image.tar"
    result = pull(conf, f"{origin.host}/{unique_repo}:{TAG}", out, "--insecure", check=False)
    assert_one_line_error(result, "blocked by", f"{conf}:2", f"prefix '{origin.host}/test'")
    assert origin.requests == [] and not out.exists()


def test_login_to_a_blocked_registry_is_refused_before_anything_is_asked_or_sent(origin, tmp_path):
    """podman refuses it too; a blocked namespace of the host leaves its login alone."""
    authfile = tmp_path / "auth.json"
    login = ["--insecure", "--authfile", str(authfile), "login", origin.host, "-u", "me"]
    conf = write_conf(tmp_path, f'\n[[registry]]\nprefix = "{origin.host}"\nblocked = true\n')
    refused = run_occystrap("--registries-conf", str(conf), *login, check=False)  # no password
    assert_one_line_error(refused, f"{origin.host}: registry {origin.host} is blocked by {conf}:2")
    assert origin.requests == [] and not authfile.exists()
    conf = write_conf(tmp_path, f'[[registry]]\nprefix = "{origin.host}/test"\nblocked = true\n')
    run_occystrap("--registries-conf", str(conf), *login, "-p", "secret")
    assert origin.requests and origin.host in json.loads(authfile.read_text())["auths"]


def test_location_rewrite_lands_on_the_rewritten_host(
    origin, registry_plain, unique_repo, tmp_path
):
    seed_image(registry_plain, unique_repo, tmp_path)
    conf = write_conf(
        tmp_path,
        f'[[registry]]\nprefix = "images.example/team"\nlocation = "{origin.host}/test"\n'
        "insecure = true\n",
    )
    name = unique_repo.removeprefix("test/")
    pull(conf, f"images.example/team/{name}:{TAG}", tmp_path / "image.tar")
    assert_tar_is_image(tmp_path / "image.tar", registry_plain, unique_repo)
    assert origin.requests_matching(rf"/v2/{unique_repo}/manifests/{TAG}$")


def test_short_names(registry_plain, unique_repo, tmp_path):
    seed_image(registry_plain, unique_repo, tmp_path)
    conf = write_conf(
        tmp_path,
        'unqualified-search-registries = ["one.invalid", "two.invalid"]\n'
        f'[[registry]]\nlocation = "{registry_plain.host}"\ninsecure = true\n'
        f'[aliases]\n"myapp" = "{registry_plain.host}/{unique_repo}"\n',
    )
    pull(conf, f"myapp:{TAG}", tmp_path / "image.tar")
    assert_tar_is_image(tmp_path / "image.tar", registry_plain, unique_repo)
    ambiguous = pull(conf, "alpine", tmp_path / "alpine.tar", check=False)
    assert_one_line_error(ambiguous, "ambiguous", "one.invalid/alpine, two.invalid/alpine")


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_a_short_name_is_looked_for_in_each_search_registry_in_turn(
    origin, mirror, registry_plain, tmp_path, mode
):
    """short-name-mode permissive or disabled (nothing can prompt): the first search
    registry lacks the image, the second has it; `process` and `digest` both find it there,
    having asked the first. None having it is one line naming each registry tried."""
    name = f"shortname-{mode}"
    seed_image(registry_plain, name, tmp_path)
    conf = write_conf(
        tmp_path,
        f'short-name-mode = "{mode}"\n'
        f'unqualified-search-registries = ["{mirror.host}", "{origin.host}"]\n',
    )
    out = tmp_path / "image.tar"
    pull(conf, f"{name}:{TAG}", out, "--insecure")
    assert_tar_is_image(out, registry_plain, name)
    assert mirror.requests_matching(rf"/v2/{name}/manifests/{TAG}$")
    digest = run_occystrap(
        "--registries-conf", str(conf), "--insecure", "digest", f"registry://{name}:{TAG}"
    ).stdout.strip()
    assert digest == skopeo_inspect(registry_plain, f"{name}:{TAG}")["Digest"]
    missing = pull(conf, f"{name}-absent:{TAG}", tmp_path / "x.tar", "--insecure", check=False)
    assert_one_line_error(
        missing,
        f"no search registry served it: {mirror.host}/{name}-absent:{TAG} (not found),"
        f" {origin.host}/{name}-absent:{TAG} (not found)",
    )
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_tags_of_a_short_name_come_from_the_first_search_registry_that_lists_it(
    origin, mirror, registry_plain, registry_basic, tmp_path, mode
):
    """`tags` looks for a short name's repository as reads look for its image: a search
    registry that lacks it (404 NAME_UNKNOWN), or refuses (401: no credentials for it), is
    asked and passed over, and the next one's tags are listed. None listing it is one line
    naming each registry tried; enforcing mode refuses the ambiguity before any request."""
    name = f"shorttags-{mode}"
    seed_image(registry_plain, name, tmp_path)
    expected = json.loads(
        run_skopeo(
            "list-tags", *registry_plain.skopeo_args(), f"docker://{registry_plain.host}/{name}"
        ).stdout
    )["Tags"]
    for first in (mirror.host, registry_basic.host):
        conf = write_conf(
            tmp_path,
            f'short-name-mode = "{mode}"\n'
            f'unqualified-search-registries = ["{first}", "{origin.host}"]\n',
        )
        listed = run_occystrap(
            "--registries-conf", str(conf), "--insecure", "-O", "json", "tags", f"registry://{name}"
        )
        assert json.loads(listed.stdout) == expected == [TAG]
    assert mirror.requests_matching(rf"/v2/{name}/tags/list")  # asked, and passed over
    assert origin.requests_matching(rf"/v2/{name}/tags/list")
    missing = run_occystrap(
        "--registries-conf", str(conf), "--insecure", "tags", f"registry://{name}-absent",
        check=False,
    )  # fmt: skip
    assert_one_line_error(
        missing,
        f"no search registry served it: {registry_basic.host}/{name}-absent (401"
        f" unauthorized), {origin.host}/{name}-absent (not found)",
    )
    enforcing = write_conf(
        tmp_path,
        f'unqualified-search-registries = ["{mirror.host}", "{origin.host}"]\n',
    )
    asked = len(mirror.requests) + len(origin.requests)
    ambiguous = run_occystrap(
        "--registries-conf", str(enforcing), "--insecure", "tags", f"registry://{name}",
        check=False,
    )  # fmt: skip
    assert_one_line_error(ambiguous, "ambiguous", f"{mirror.host}/{name}, {origin.host}/{name}")
    assert len(mirror.requests) + len(origin.requests) == asked


def test_a_tag_listing_failing_after_its_first_page_is_that_registrys_error(
    origin, registry_plain, registry_no_delete, tmp_path
):
    """The first search registry lists the repository, a page at a time, and fails at the
    second page (503, after the retry): that is its error, in one line. The next search
    registry, which holds a repository of that name too, is not asked: its tags are not
    this listing's."""
    name = "shortpages"
    seed_image(registry_no_delete, name, tmp_path)
    push_with_skopeo(tmp_path / f"layout-{name}", registry_no_delete, name, "v2")
    seed_image(registry_plain, name, tmp_path)
    with (
        TagPagingProxy(registry_no_delete.url) as paging,
        FaultProxy(paging.url) as first,
    ):
        first.fail_next(100, status=503, path=rf"/v2/{name}/tags/list\?last=")
        conf = permissive(tmp_path, first.host, origin.host)
        result = run_occystrap(
            "--registries-conf", str(conf), "--insecure", "--retries", "1", "tags", "-n", "1",
            f"registry://{name}", check=False,
        )  # fmt: skip
        assert_one_line_error(result, f"{first.host} answered HTTP 503 for tags of {name}")
        assert "no search registry" not in result.stderr
        asked = first.requests_matching(rf"/v2/{name}/tags/list")
    assert [(request.path, request.action) for request in asked] == [
        (f"/v2/{name}/tags/list?n=1", "forwarded"),
        (f"/v2/{name}/tags/list?last={TAG}&n=1", "failed"),
        (f"/v2/{name}/tags/list?last={TAG}&n=1", "failed"),  # the retry
    ]
    assert not origin.requests_matching(rf"/v2/{name}/tags/list")


@pytest.mark.parametrize("command", ["tags", "digest"])
def test_a_usage_error_under_a_short_name_is_not_passed_over(origin, tmp_path, command):
    """An unreadable --ca-cert fails alike at every search registry: it is the one-line
    error, not "no search registry served it", and no registry is asked."""
    conf = write_conf(
        tmp_path,
        'short-name-mode = "permissive"\n'
        f'unqualified-search-registries = ["{origin.host}", "127.0.0.1:9"]\n',
    )
    missing = tmp_path / "absent-ca.pem"
    result = run_occystrap(
        "--registries-conf", str(conf), "--ca-cert", str(missing), command, "registry://app",
        check=False,
    )  # fmt: skip
    assert_one_line_error(result, "cannot load CA certificate file", str(missing))
    assert not origin.requests


def test_referrers_and_artifact_pull_look_for_a_short_name_in_each_search_registry(
    origin, mirror, registry_plain, unique_repo, tmp_path
):
    """The image and its SBOM are only in the second search registry: `referrers` and
    `artifact pull` ask the first, pass it over and read the second, as `digest` does."""
    name = unique_repo.rpartition("/")[2]  # one component: a short name
    with registry_plain.client() as http:
        writer = RegistryWriter(http, name)
        image = writer.image("subject", tag=TAG)
        sbom = writer.sbom(image)
        assert writer.manifest(json.loads(sbom.raw), "sbom") == sbom  # pulled by tag
    conf = permissive(tmp_path, mirror.host, origin.host)
    common = ["--registries-conf", str(conf), "--insecure"]
    listed = json.loads(
        run_occystrap(*common, "-O", "json", "referrers", f"registry://{name}:{TAG}").stdout
    )
    assert listed["reference"] == f"{origin.host}/{name}:{TAG}"
    assert listed["digest"] == image.digest
    assert [(entry["digest"], entry["artifactType"]) for entry in listed["referrers"]] == [
        (sbom.digest, SPDX)
    ]
    out = tmp_path / "pulled"
    run_occystrap(*common, "artifact", "pull", f"registry://{name}:sbom", str(out))
    assert json.loads((out / "sbom.spdx.json").read_text())["spdxVersion"] == "SPDX-2.3"
    assert mirror.requests_matching(rf"/v2/{name}/manifests/{TAG}$")  # asked, passed over
    assert mirror.requests_matching(rf"/v2/{name}/manifests/sbom$")


def test_artifact_push_to_a_short_name_lands_in_the_first_search_registry(
    origin, mirror, registry_plain, registry_no_delete, unique_repo, tmp_path
):
    """A destination is not searched for: the artifact goes to the first search registry,
    as `process` writes a short name there; enforcing mode refuses the ambiguity first."""
    name = unique_repo.rpartition("/")[2]  # one component: a short name
    payload = tmp_path / "notes.txt"
    payload.write_text("pushed by short name\n")
    push = ["artifact", "push", f"registry://{name}:bundle", str(payload)]
    push += ["--artifact-type", "application/vnd.example.notes.v1"]
    conf = permissive(tmp_path, mirror.host, origin.host)
    digest = run_occystrap("--registries-conf", str(conf), "--insecure", *push).stdout.strip()
    with registry_no_delete.client() as http:
        raw = RegistryReader(http, name).manifest("bundle")
    assert raw is not None and digest_of(raw) == digest
    with registry_plain.client() as http:
        assert RegistryReader(http, name).manifest("bundle") is None
    assert not origin.requests
    enforcing = write_conf(
        tmp_path, f'unqualified-search-registries = ["{mirror.host}", "{origin.host}"]\n'
    )
    asked = len(mirror.requests)
    ambiguous = run_occystrap("--registries-conf", str(enforcing), "--insecure", *push, check=False)
    assert_one_line_error(ambiguous, "ambiguous", f"{mirror.host}/{name}, {origin.host}/{name}")
    assert len(mirror.requests) == asked and not origin.requests


def permissive(tmp_path: Path, *search: str) -> Path:
    """registries.conf trying each of `search` in order for a short name."""
    registries = ", ".join(f'"{host}"' for host in search)
    return write_conf(
        tmp_path,
        f'short-name-mode = "permissive"\nunqualified-search-registries = [{registries}]\n',
    )


def short_name_read(command: str, out: Path) -> list[str]:
    """`command` reading the short name `app` (`process` into `out`)."""
    return {
        "tags": ["tags", "registry://app"],
        "digest": ["digest", f"registry://app:{TAG}"],
        "process": ["process", f"registry://app:{TAG}", f"tar://{out}"],
        "referrers": ["referrers", f"registry://app:{TAG}"],
        "artifact pull": ["artifact", "pull", f"registry://app:{TAG}", str(out)],
    }[command]


@pytest.mark.parametrize("command", ["tags", "digest", "process", "referrers", "artifact pull"])
@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--username", "someone", "--password", "secret"], {}),
        ([], {"OCCYSTRAP_USERNAME": "someone", "OCCYSTRAP_PASSWORD": "secret"}),
        (["--src-creds", "someone:secret"], {}),
    ],
    ids=["flags", "environment", "src-creds"],
)
def test_command_line_credentials_are_refused_for_a_short_name_searched_at_several_registries(
    origin, mirror, tmp_path, command, flags, env
):
    """A command-line credential belongs to one host, and a search would send it to each
    registry tried: every read of a short name with several search registries refuses it
    in one line, before any request, and says to name the registry in full. --src-creds
    are a source's (a copy's, or what `referrers` and `artifact pull` read): `tags` and
    `digest` do not use them, so they do not refuse."""
    conf = permissive(tmp_path, mirror.host, origin.host)
    result = run_occystrap(
        "--registries-conf", str(conf), "--insecure", *flags,
        *short_name_read(command, tmp_path / "x.tar"), env=env, check=False,
    )  # fmt: skip
    if flags[:1] == ["--src-creds"] and command in ("tags", "digest"):
        named = "app" if command == "tags" else f"app:{TAG}"
        assert_one_line_error(  # searched, without them
            result,
            f"no search registry served it: {mirror.host}/{named} (not found),"
            f" {origin.host}/{named} (not found)",
        )
        assert mirror.requests and origin.requests
        assert not any("authorization" in r.headers for r in mirror.requests + origin.requests)
        return
    named = f"{mirror.host}/app" if command == "tags" else f"{mirror.host}/app:{TAG}"
    assert_one_line_error(
        result,
        "credentials given on the command line belong to one host",
        f"{mirror.host}/app",
        f"{origin.host}/app",
        f"name the registry in full, e.g. registry://{named}",
    )
    assert not mirror.requests and not origin.requests
    assert not (tmp_path / "x.tar").exists()


def test_auth_file_credentials_go_to_their_own_search_registry_only(registry_basic, tmp_path):
    """Credentials from an auth file are a host's own: searching a short name, the first
    registry (which has no entry) is asked without them, refuses (401) and is passed over;
    the second gets its own and answers, for `tags`, `digest` and `process` alike."""
    name = "authfile-search"
    seed_image(registry_basic, name, tmp_path)
    with FaultProxy(registry_basic.url) as first, FaultProxy(registry_basic.url) as second:
        secret = base64.b64encode(f"{BASIC_USERNAME}:{BASIC_PASSWORD}".encode()).decode()
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"auths": {second.host: {"auth": secret}}}))
        conf = permissive(tmp_path, first.host, second.host)
        common = ["--registries-conf", str(conf), "--insecure", "--authfile", str(authfile)]
        listed = run_occystrap(*common, "-O", "json", "tags", f"registry://{name}")
        assert json.loads(listed.stdout) == [TAG]
        digest = run_occystrap(*common, "digest", f"registry://{name}:{TAG}").stdout.strip()
        assert digest == skopeo_inspect(registry_basic, f"{name}:{TAG}")["Digest"]
        out = tmp_path / "image.tar"
        run_occystrap(*common, "process", f"registry://{name}:{TAG}", f"tar://{out}")
        assert_tar_is_image(out, registry_basic, name)
        assert first.requests_matching(rf"/v2/{name}/(tags|manifests)/")  # asked, passed over
        assert not any("authorization" in r.headers for r in first.requests)
        assert any(r.headers.get("authorization") == f"Basic {secret}" for r in second.requests)


@pytest.mark.parametrize("command", ["tags", "digest", "process"])
def test_the_search_says_why_each_registry_gave_no_answer(
    origin, registry_basic, registry_tls, tmp_path, command
):
    """None of the search registries answering is one line saying why, each: the one that
    holds the image but refuses without credentials (401), one failing (503, after the
    retries), one not trusted (TLS), one not listening, one lacking it (404)."""
    seed_image(registry_basic, "app", tmp_path)
    with FaultProxy(registry_basic.url) as failing:
        failing.fail_next(100, status=503)
        conf = write_conf(
            tmp_path,
            'short-name-mode = "permissive"\n'
            "unqualified-search-registries = ["
            f'"{registry_basic.host}", "{failing.host}", "{registry_tls.host}",'
            f' "127.0.0.1:9", "{origin.host}"]\n'
            + "".join(
                f'[[registry]]\nlocation = "{host}"\ninsecure = true\n'
                for host in (registry_basic.host, failing.host, "127.0.0.1:9", origin.host)
            ),
        )
        result = run_occystrap(
            "--registries-conf", str(conf), "--retries", "1",
            *short_name_read(command, tmp_path / "x.tar"), check=False,
        )  # fmt: skip
        # Tried, and retried once (a manifest: HEAD, then GET as HEAD said nothing useful).
        asked = failing.requests_matching("/v2/app/")
        assert len(asked) == (2 if command == "tags" else 4)
        failing_host = failing.host
    named = "app" if command == "tags" else f"app:{TAG}"
    assert_one_line_error(
        result,
        f"no search registry served it: {registry_basic.host}/{named} (401 unauthorized),"
        f" {failing_host}/{named} (503 service unavailable),"
        f" {registry_tls.host}/{named} (TLS certificate not trusted),"
        f" 127.0.0.1:9/{named} (unreachable), {origin.host}/{named} (not found)",
    )
    assert not (tmp_path / "x.tar").exists()


def test_config_file_environment_and_command_line_each_win(registry_plain, unique_repo, tmp_path):
    """`insecure` decides whether a plain-HTTP registry answers: each level overrides the one
    below it, and `occystrap config` names the level that won."""
    seed_image(registry_plain, unique_repo, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text("retries = 0\ninsecure = true\n")
    image = f"registry://{registry_plain.host}/{unique_repo}:{TAG}"
    file_only = {"OCCYSTRAP_CONFIG": str(config)}
    env_off = {**file_only, "OCCYSTRAP_INSECURE": "false"}

    def insecure_source(env: dict[str, str], *flags: str) -> str:
        shown = json.loads(run_occystrap(*flags, "-O", "json", "config", env=env).stdout)
        return shown["options"]["insecure"]["source"]

    assert run_occystrap("digest", image, env=file_only).stdout.startswith("sha256:")
    assert insecure_source(file_only) == f"config file ({config}:2)"
    assert run_occystrap("digest", image, env=env_off, check=False).returncode != 0
    assert insecure_source(env_off) == "environment (OCCYSTRAP_INSECURE)"
    assert run_occystrap("--insecure", "digest", image, env=env_off).stdout.startswith("sha256:")
    assert insecure_source(env_off, "--insecure") == "command line"
    assert insecure_source({}) == "default"


def test_malformed_files_are_one_line(registry_plain, tmp_path):
    image = f"registry://{registry_plain.host}/a/b:{TAG}"
    config = tmp_path / "config.toml"
    config.write_text("retries = 2\nparallel = = 3\n")
    result = run_occystrap("--config", str(config), "digest", image, check=False)
    assert_one_line_error(result, f"{config}:2:", "not valid TOML")
    conf = write_conf(tmp_path, '[[registry]]\nlocation = "x.example"\n[[registry.mirror]]\n')
    result = run_occystrap("--registries-conf", str(conf), "digest", image, check=False)
    assert_one_line_error(result, f"{conf}:3:", "needs a location")
