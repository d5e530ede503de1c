"""`occystrap sync` end to end: two real registries, skopeo as the judge of every digest."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, run_occystrap
from tests.integration.fault_proxy import FaultProxy
from tests.integration.images import (
    build_multiarch_layout,
    build_oci_layout,
    layout_blob,
    layout_blob_files,
    layout_image_blobs,
    layout_index_tags,
    layout_reachable_blobs,
    push_multiarch_with_skopeo,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_copy_out_of_layout,
    skopeo_inspect,
)
from tests.integration.servers import RegistryServer
from tests.integration.signing import (
    OCI_INDEX,
    Pushed,
    RegistryReader,
    RegistryWriter,
    digest_of,
    signing_key,
    tag_for,
)

pytestmark = pytest.mark.integration

# repository -> tags; every image shares one base layer and has one of its own.
SEEDED = {
    "alpha": ["1.0.0", "1.1.0", "2.0.0-rc1", "latest"],
    "beta": ["3.18.0", "3.19.1", "3.20.0", "edge"],
    "team/gamma": ["1.0"],
    "team/delta": ["0.1", "0.2"],
}


@dataclass
class Seeded:
    registry: RegistryServer
    prefix: str  # unique per module: the seeded repositories are PREFIX/NAME

    def digest(self, repository: str, tag: str) -> str:
        return skopeo_inspect(self.registry, f"{self.prefix}/{repository}:{tag}")["Digest"]


@pytest.fixture(scope="module")
def seeded(registry_plain, tmp_path_factory) -> Seeded:
    workdir = tmp_path_factory.mktemp("sync-layouts")
    prefix = f"sync-{uuid.uuid4().hex[:8]}"
    base = random_layer(150_000, 11)
    for repository, tags in SEEDED.items():
        for tag in tags:
            layout = workdir / f"{repository.replace('/', '_')}-{tag}"
            build_oci_layout(layout, [base, {"etc/image": f"{repository}:{tag}".encode()}])
            push_with_skopeo(layout, registry_plain, f"{prefix}/{repository}", tag)
    return Seeded(registry_plain, prefix)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("sync-mirror")) as server:
        yield server


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def sync(*args: str, check: bool = True):
    return run_occystrap("--insecure", "sync", *args, check=check, timeout=300)


def result_lines(stdout: str) -> dict[str, str]:
    """target URI -> status, from the one line per image."""
    found = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        target = rest.strip().split(" -> ")[-1].split(" ")[0].rstrip(":")
        found[target] = status
    return found


def test_sync_filters_copies_and_a_second_run_moves_nothing(seeded, mirror, tmp_path):
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    target = f"{dst}/{prefix}-a"
    spec = write_yaml(
        tmp_path / "sync.yaml",
        {
            "sync": [
                {
                    "source": f"registry://{src}/{prefix}/alpha",
                    "target": f"registry://{target}/alpha",
                    "tags": {"deny": ["-rc"], "allow": ["^[0-9]"]},
                },
                {
                    "source": f"registry://{src}/{prefix}/beta",
                    "target": f"registry://{target}/beta",
                    "tags": {"semver": ">=3.19", "latest": 1},
                },
                {
                    "source": f"registry://{src}/{prefix}/team/*",
                    "target": f"registry://{target}/team",
                },
            ]
        },
    )
    report = tmp_path / "report.json"
    first = sync(str(spec), "--report", str(report))
    wanted = {
        ("alpha", "1.0.0"),
        ("alpha", "1.1.0"),
        ("beta", "3.20.0"),
        ("team/gamma", "1.0"),
        ("team/delta", "0.1"),
        ("team/delta", "0.2"),
    }
    expected = {f"registry://{target}/{repo}:{tag}": "copied" for repo, tag in wanted}
    assert result_lines(first.stdout) == expected, first.stdout
    for repository, tag in wanted:
        held = skopeo_inspect(mirror, f"{prefix}-a/{repository}:{tag}")["Digest"]
        assert held == seeded.digest(repository, tag)
    # Filtered tags never reached the mirror.
    listed = run_occystrap("--insecure", "-O", "json", "tags", f"registry://{target}/alpha")
    assert sorted(json.loads(listed.stdout)) == ["1.0.0", "1.1.0"]
    entries = json.loads(report.read_text())
    assert {entry["status"] for entry in entries} == {"copied"}
    assert all(entry["digest"].startswith("sha256:") for entry in entries)
    assert set(entries[0]) == {"source", "target", "status", "digest", "bytes", "error"}
    assert sum(entry["bytes"] for entry in entries) < 2 * 150_000 + 6 * 10_000

    # The second run, with the source behind a recording proxy: one HEAD per tag, no blob.
    with FaultProxy(seeded.registry.url) as proxy:
        text = spec.read_text().replace(src, proxy.host)
        spec.write_text(text)
        second = sync(str(spec), "--report", str(report))
        assert set(result_lines(second.stdout).values()) == {"unchanged"}, second.stdout
        assert not proxy.requests_matching(r"/blobs/"), proxy.requests
        heads = proxy.requests_matching(r"/manifests/", "HEAD")
        assert len(heads) == len(wanted)
        assert not proxy.requests_matching(r"/manifests/", "GET")
    assert {entry["status"] for entry in json.loads(report.read_text())} == {"unchanged"}


def test_shared_base_layer_is_uploaded_once(seeded, mirror, tmp_path):
    """Eight images share one base layer: one upload, then mounts (cache off, so the run's
    own ledger is what finds it)."""
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    spec = write_yaml(
        tmp_path / "sync.yaml",
        {
            "sync": [
                {
                    "source": f"registry://{src}/{prefix}/*a",
                    "target": f"registry://{dst}/{prefix}-b",
                    "tags": {"deny": ["-rc", "edge", "latest"]},
                }
            ]
        },
    )
    result = run_occystrap("--insecure", "--no-cache", "-O", "json", "sync", "-J", "4", str(spec))
    entries = json.loads(result.stdout)
    assert len(entries) == 8 and {entry["status"] for entry in entries} == {"copied"}
    # 8 own layers + 8 configs + 1 base: 17 uploads; the base is mounted into the three
    # other repositories (and found already there for each repository's further tags).
    assert "blobs 17 uploaded, 3 mounted" in result.stderr, result.stderr
    assert 150_000 < sum(entry["bytes"] for entry in entries) < 2 * 150_000


def test_dry_run_prints_the_plan_and_copies_nothing(seeded, mirror, tmp_path):
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    spec = write_yaml(
        tmp_path / "sync.yaml",
        {
            "sync": [
                {
                    "source": f"registry://{src}/{prefix}/beta",
                    "target": f"registry://{dst}/{prefix}-c/beta",
                }
            ]
        },
    )
    result = run_occystrap("--insecure", "-O", "json", "sync", "--dry-run", str(spec))
    plan = json.loads(result.stdout)
    assert sorted(image["target"].rpartition(":")[2] for image in plan) == sorted(SEEDED["beta"])
    assert {image["action"] for image in plan} == {"copy"}
    assert all(image["target_digest"] is None for image in plan)
    for image in plan:
        tag = image["target"].rpartition(":")[2]
        assert image["digest"] == seeded.digest("beta", tag)
    text = sync("--dry-run", str(spec))
    assert text.stdout.count("copy ") == 4
    tags = run_occystrap("--insecure", "tags", f"registry://{dst}/{prefix}-c/beta", check=False)
    assert tags.returncode != 0  # nothing was written


def test_prune_deletes_tags_the_source_no_longer_has(seeded, mirror, tmp_path):
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    rule = {
        "source": f"registry://{src}/{prefix}/team/delta",
        "target": f"registry://{dst}/{prefix}-d/delta",
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    sync(str(spec))
    narrowed = {**rule, "tags": {"allow": ["^0\\.2$"]}}
    write_yaml(spec, {"sync": [narrowed]})
    without = sync(str(spec))
    assert "pruned" not in without.stdout  # prune is opt-in
    pruned = sync(str(spec), "--prune")
    lines = result_lines(pruned.stdout)
    assert lines == {
        f"registry://{dst}/{prefix}-d/delta:0.2": "unchanged",
        f"registry://{dst}/{prefix}-d/delta:0.1": "pruned",
    }, pruned.stdout
    listed = run_occystrap("--insecure", "-O", "json", "tags", f"registry://{dst}/{prefix}-d/delta")
    assert json.loads(listed.stdout) == ["0.2"]


def listed_tags(registry: RegistryServer, repository: str) -> set[str]:
    """The tags skopeo lists at the target."""
    listed = run_skopeo(
        "list-tags", *registry.skopeo_args(), f"docker://{registry.host}/{repository}"
    )
    return set(json.loads(listed.stdout)["Tags"])


def target_tags(registry: RegistryServer, repository: str) -> dict[str, str]:
    """tag -> digest at the target, as skopeo reads them."""
    return {
        tag: skopeo_inspect(registry, f"{repository}:{tag}")["Digest"]
        for tag in listed_tags(registry, repository)
    }


def test_prune_never_deletes_a_manifest_a_tag_that_stays_holds(seeded, mirror, tmp_path):
    """Registries delete manifests by digest: a stale tag sharing its manifest with a tag
    that stays is reported `kept` (plan, run and report), never deleted; stale tags sharing
    one manifest go together; the check is made again after the copies (a copy that failed
    leaves its tag on the old manifest, which must then survive)."""
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    repository, target = f"{prefix}/shared", f"{prefix}-s/shared"
    images = {}
    for name, seed in (("x", 21), ("y", 22), ("z", 23), ("z2", 24)):
        build_oci_layout(tmp_path / name, [random_layer(2000, seed)])
        images[name] = tmp_path / name
    for tag, image in (("a", "x"), ("b", "x"), ("c", "y"), ("d", "y"), ("e", "z"), ("f", "z")):
        push_with_skopeo(images[image], seeded.registry, repository, tag)
    digest = {
        name: seeded.digest("shared", tag) for name, tag in (("x", "a"), ("y", "c"), ("z", "e"))
    }
    rule = {"source": f"registry://{src}/{repository}", "target": f"registry://{dst}/{target}"}
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    sync(str(spec))
    # The source keeps a and e only, and e moves on: once e is copied, f alone holds z.
    push_with_skopeo(images["z2"], seeded.registry, repository, "e")
    digest["z2"] = seeded.digest("shared", "e")
    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^(a|e)$"]}}]})
    at = f"registry://{dst}/{target}"

    planned = run_occystrap("--insecure", "-O", "json", "sync", "--dry-run", "--prune", str(spec))
    plan = {image["target"]: image for image in json.loads(planned.stdout)}
    assert {uri: image["action"] for uri, image in plan.items()} == {
        f"{at}:a": "unchanged",
        f"{at}:e": "copy",
        f"{at}:b": "kept",
        f"{at}:c": "prune",
        f"{at}:d": "prune",
        f"{at}:f": "prune",
    }, planned.stdout
    assert plan[f"{at}:b"]["error"] == "shares manifest with a"
    assert plan[f"{at}:b"]["digest"] == digest["x"]
    text = sync("--dry-run", "--prune", str(spec))
    assert f"kept      {at}:b {digest['x']}: shares manifest with a" in text.stdout, text.stdout
    assert "1 kept" in text.stderr, text.stderr
    assert target_tags(mirror, target) == dict(
        a=digest["x"], b=digest["x"], c=digest["y"], d=digest["y"], e=digest["z"], f=digest["z"]
    )

    # e's copy fails: e still holds z at the target, so f's manifest must stay too.
    with FaultProxy(mirror.url) as proxy:
        proxy.fail_next(1, status=400, path=rf"/v2/{target}/manifests/", method="PUT")
        failing = tmp_path / "failing.yaml"
        broken_rule = {**rule, "target": f"registry://{proxy.host}/{target}"}
        write_yaml(failing, {"sync": [{**broken_rule, "tags": {"allow": ["^(a|e)$"]}}]})
        report = tmp_path / "failing.json"
        run = sync(str(failing), "--prune", "--keep-going", "--report", str(report), check=False)
        assert run.returncode != 0, run.stderr
        via = f"registry://{proxy.host}/{target}"
        statuses = {e["target"]: (e["status"], e["error"]) for e in json.loads(report.read_text())}
        assert statuses[f"{via}:e"][0] == "failed", statuses
        assert {tag: statuses[f"{via}:{tag}"] for tag in "abcdf"} == {
            "a": ("unchanged", None),
            "b": ("kept", "shares manifest with a"),
            "c": ("pruned", None),
            "d": ("pruned", None),
            "f": ("kept", "shares manifest with e"),
        }, statuses
    assert target_tags(mirror, target) == dict(
        a=digest["x"], b=digest["x"], e=digest["z"], f=digest["z"]
    )

    report = tmp_path / "report.json"
    run = sync(str(spec), "--prune", "--report", str(report))
    assert result_lines(run.stdout) == {
        f"{at}:a": "unchanged",
        f"{at}:e": "copied",
        f"{at}:b": "kept",
        f"{at}:f": "pruned",
    }, run.stdout
    assert "1 pruned, 1 kept" in run.stderr, run.stderr
    entries = {entry["target"]: entry for entry in json.loads(report.read_text())}
    assert entries[f"{at}:b"]["status"] == "kept"
    assert entries[f"{at}:b"]["error"] == "shares manifest with a"
    assert target_tags(mirror, target) == dict(a=digest["x"], b=digest["x"], e=digest["z2"])


def prune_drop_and_its_referrers(spec: Path, at: str, referrers: list[str]) -> None:
    """A dry run plans `drop` (of the target `at`) and its `referrers` tags pruned and
    `keep` unchanged; the run prunes them, keeping nothing."""
    planned = run_occystrap("--insecure", "-O", "json", "sync", "--dry-run", "--prune", str(spec))
    assert {image["target"]: image["action"] for image in json.loads(planned.stdout)} == {
        f"{at}:keep": "unchanged",
        f"{at}:drop": "prune",
        **{f"{at}:{tag}": "prune" for tag in referrers},
    }, planned.stdout
    run = sync(str(spec), "--prune")
    assert f"{len(referrers) + 1} pruned, 0 kept" in run.stderr, run.stderr


def test_prune_in_a_registry_keeps_the_referrers_of_what_stays(seeded, mirror, tmp_path):
    """The mirror (no referrers API) keeps referrers under `sha256-<hex>` tags no rule names:
    those of a kept image stay (before, prune deleted the kept image's SBOM index, and as
    the image was unchanged no later run copied it back); those of a pruned image go too."""
    repository = f"{seeded.prefix}/registry-referrers"
    with seeded.registry.client() as http:
        writer = RegistryWriter(http, repository)
        keep, drop = writer.image("keep", tag="keep"), writer.image("drop", tag="drop")
        kept_sbom = writer.sbom(keep)
        writer.sbom(drop, name="drop.spdx.json")
        writer.cosign_sign(drop, signing_key(), f"{seeded.registry.host}/{repository}")
    target = f"{seeded.prefix}-r/referrers"
    rule = {
        "source": f"registry://{seeded.registry.host}/{repository}",
        "target": f"registry://{mirror.host}/{target}",
        "referrers": True,
        "tags": {"allow": ["^(keep|drop)$"]},
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    sync(str(spec))
    referrers = {tag_for(keep.digest), tag_for(drop.digest), tag_for(drop.digest, ".sig")}
    assert listed_tags(mirror, target) == {"keep", "drop", *referrers}

    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^keep$"]}}]})
    at = f"registry://{mirror.host}/{target}"
    prune_drop_and_its_referrers(spec, at, [tag_for(drop.digest), tag_for(drop.digest, ".sig")])
    assert listed_tags(mirror, target) == {"keep", tag_for(keep.digest)}
    with mirror.client() as http:
        listed = RegistryReader(http, target).referrers(keep.digest)
    assert [entry["digest"] for entry in listed] == [kept_sbom.digest]


def _platform_index(writer: RegistryWriter, tag: str, *platforms) -> Pushed:
    """An index over `platforms` (image, architecture), pushed under `tag`."""
    entries = [
        image.descriptor(platform={"os": "linux", "architecture": arch})
        for image, arch in platforms
    ]
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return writer.manifest(document, tag)


def test_prune_in_a_registry_takes_the_referrers_of_a_pruned_indexs_platforms(
    seeded, mirror, tmp_path
):
    """An index pruned from a registry takes along the referrers tags of its platform
    manifests (an SBOM index, a cosign signature), except those of a platform manifest an
    index that stays lists too; before, they were left behind for ever. The test writes
    both ends itself and reads the mirror directly."""
    repository, target = f"{seeded.prefix}/platform-referrers", f"{seeded.prefix}-pr/app"
    with seeded.registry.client() as http:
        writer = RegistryWriter(http, repository)
        shared = writer.image("shared", arch="amd64")
        kept_arm = writer.image("k", arch="arm64")
        keep = _platform_index(writer, "keep", (shared, "amd64"), (kept_arm, "arm64"))
    with mirror.client() as http:
        writer = RegistryWriter(http, target)
        assert writer.image("shared", arch="amd64") == shared
        assert writer.image("k", arch="arm64") == kept_arm
        assert _platform_index(writer, "keep", (shared, "amd64"), (kept_arm, "arm64")) == keep
        own = writer.image("drop", arch="arm64")
        drop = _platform_index(writer, "drop", (shared, "amd64"), (own, "arm64"))
        shared_sbom = writer.sbom(shared)
        writer.sbom(own, name="own.spdx.json")
        writer.cosign_sign(own, signing_key(), f"{mirror.host}/{target}")
        writer.sbom(drop, name="drop.spdx.json")
    assert listed_tags(mirror, target) == {
        "keep",
        "drop",
        tag_for(shared.digest),
        tag_for(own.digest),
        tag_for(own.digest, ".sig"),
        tag_for(drop.digest),
    }
    rule = {
        "source": f"registry://{seeded.registry.host}/{repository}",
        "target": f"registry://{mirror.host}/{target}",
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    at = f"registry://{mirror.host}/{target}"
    going = [tag_for(drop.digest), tag_for(own.digest), tag_for(own.digest, ".sig")]
    prune_drop_and_its_referrers(spec, at, going)
    assert listed_tags(mirror, target) == {"keep", tag_for(shared.digest)}
    with mirror.client() as http:
        reader = RegistryReader(http, target)
        assert reader.manifest("drop") is None
        assert [entry["digest"] for entry in reader.referrers(shared.digest)] == [
            shared_sbom.digest
        ]
        assert json.loads(reader.manifest("keep"))["manifests"][0]["digest"] == shared.digest


def test_keep_going_past_a_broken_image(seeded, mirror, tmp_path):
    """A tag whose manifest names a config blob the registry lacks fails; --keep-going
    copies the rest, and the exit status still says something failed."""
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    broken = f"{prefix}/broken"
    layout = tmp_path / "broken"
    build_oci_layout(layout, [random_layer(1000, 3)])
    push_with_skopeo(layout, seeded.registry, broken, "1")
    push_with_skopeo(layout, seeded.registry, broken, "2")
    manifest = skopeo_inspect(seeded.registry, f"{broken}:1", raw=True)
    layer = manifest["layers"][0]["digest"]
    # Delete the layer blob: tag 1 and 2 now name a blob that is gone.
    with seeded.registry.client() as http:
        assert http.delete(f"{seeded.registry.url}/v2/{broken}/blobs/{layer}").status_code == 202
    build_oci_layout(tmp_path / "fine", [random_layer(1000, 4)])
    push_with_skopeo(tmp_path / "fine", seeded.registry, broken, "3")
    spec = write_yaml(
        tmp_path / "sync.yaml",
        {
            "sync": [
                {
                    "source": f"registry://{src}/{broken}",
                    "target": f"registry://{dst}/{prefix}-e/broken",
                }
            ]
        },
    )
    report = tmp_path / "report.json"
    stopped = sync(str(spec), "-J", "1", "--report", str(report), check=False)
    assert stopped.returncode != 0
    entries = json.loads(report.read_text())
    statuses = [entry["status"] for entry in entries]
    # One at a time: the first broken image fails, nothing starts after it.
    assert statuses.count("failed") == 1 and "deferred" in statuses, entries
    failed = statuses.index("failed")
    assert entries[failed]["error"] and set(statuses[failed + 1 :]) == {"deferred"}
    carried = sync(str(spec), "-J", "1", "--keep-going", "--report", str(report), check=False)
    assert carried.returncode != 0
    statuses = {e["target"].rpartition(":")[2]: e["status"] for e in json.loads(report.read_text())}
    assert statuses.pop("3") in ("copied", "unchanged")  # the first run may have copied it
    assert statuses == {"1": "failed", "2": "failed"}
    assert skopeo_inspect(mirror, f"{prefix}-e/broken:3")["Digest"] == seeded.digest("broken", "3")


def test_skopeo_sync_yaml_gives_what_skopeo_sync_gives(seeded, mirror, tmp_path):
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    document = {
        src: {
            "tls-verify": False,
            "images": {f"{prefix}/alpha": ["1.0.0", "latest"], f"{prefix}/team/gamma": []},
            # (skopeo 1.9 predates images-by-semver: tests/unit/test_sync_config.py has it.)
            "images-by-tag-regex": {f"{prefix}/team/delta": "^0\\.2", f"{prefix}/beta": "^3"},
        }
    }
    spec = write_yaml(tmp_path / "skopeo.yaml", document)
    run_skopeo(
        "sync",
        "--src",
        "yaml",
        "--dest",
        "docker",
        "--dest-tls-verify=false",
        str(spec),
        f"{dst}/{prefix}-skopeo",
    )
    ours = sync(str(spec), "--dest", f"registry://{dst}/{prefix}-ours")
    assert set(result_lines(ours.stdout).values()) == {"copied"}
    catalog = run_occystrap("--insecure", "-O", "json", "catalog", f"registry://{dst}")
    names = json.loads(catalog.stdout)
    theirs = sorted(
        n.removeprefix(f"{prefix}-skopeo/") for n in names if n.startswith(f"{prefix}-skopeo/")
    )
    mine = sorted(
        n.removeprefix(f"{prefix}-ours/") for n in names if n.startswith(f"{prefix}-ours/")
    )
    assert mine == theirs == ["alpha", "beta", "delta", "gamma"]
    for name in mine:
        their_tags = run_occystrap(
            "--insecure", "-O", "json", "tags", f"registry://{dst}/{prefix}-skopeo/{name}"
        )
        my_tags = run_occystrap(
            "--insecure", "-O", "json", "tags", f"registry://{dst}/{prefix}-ours/{name}"
        )
        assert sorted(json.loads(my_tags.stdout)) == sorted(json.loads(their_tags.stdout))
        for tag in json.loads(my_tags.stdout):
            theirs_digest = skopeo_inspect(mirror, f"{prefix}-skopeo/{name}:{tag}")["Digest"]
            assert skopeo_inspect(mirror, f"{prefix}-ours/{name}:{tag}")["Digest"] == theirs_digest


def test_catalog_lists_repositories_under_a_prefix(seeded):
    found = run_occystrap(
        "--insecure", "catalog", f"registry://{seeded.registry.host}/{seeded.prefix}/team"
    )
    assert found.stdout.split() == [f"{seeded.prefix}/team/delta", f"{seeded.prefix}/team/gamma"]
    globbed = run_occystrap(
        "--insecure",
        "catalog",
        f"registry://{seeded.registry.host}",
        "--glob",
        f"{seeded.prefix}/*ta",
    )
    # Asked one repository per page, every page is followed (Link: rel="next").
    with FaultProxy(seeded.registry.url) as proxy:
        paged = run_occystrap(
            "--insecure", "catalog", "-n", "1", f"registry://{proxy.host}/{seeded.prefix}/team"
        )
        assert len(proxy.requests_matching(r"/v2/_catalog")) > 2
    assert paged.stdout == found.stdout
    # As in shell-style globs of repository names elsewhere (quay://), * crosses '/'.
    assert globbed.stdout.split() == [
        f"{seeded.prefix}/beta",
        f"{seeded.prefix}/team/delta",
    ]


def test_quota_floor_defers_the_rest_without_a_single_429(seeded, mirror, tmp_path):
    """The source states a pull quota counting down with each manifest GET (HEADs are
    free, as on Docker Hub); the run stops starting images at the floor."""
    prefix = seeded.prefix
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.count_down_quota(limit=8, window=3600)
        spec = write_yaml(
            tmp_path / "sync.yaml",
            {
                "sync": [
                    {
                        "source": f"registry://{proxy.host}/{prefix}/*a",
                        "target": f"registry://{mirror.host}/{prefix}-q",
                        "tags": {"deny": ["-rc", "edge", "latest"]},
                    }
                ]
            },
        )
        report = tmp_path / "report.json"
        result = sync(str(spec), "-J", "2", "--report", str(report))
        assert all(r.action != "rate-limited" for r in proxy.requests)
        spent = len(proxy.requests_matching(r"/manifests/", "GET"))
    entries = json.loads(report.read_text())
    statuses = [entry["status"] for entry in entries]
    # 8 pulls, floor 5: images start while more than 5 are left, each spending one.
    assert spent == statuses.count("copied") and 3 <= spent <= 8 - 1
    assert statuses.count("deferred") == len(entries) - spent > 0
    deferred = next(entry for entry in entries if entry["status"] == "deferred")
    assert "pulls left" in deferred["error"] and "resets by" in deferred["error"]
    assert result.returncode == 0


def test_ratelimit_prints_the_stated_quota(seeded):
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.count_down_quota(limit=100, window=21600)
        shown = run_occystrap(
            "--insecure",
            "-O",
            "json",
            "ratelimit",
            f"registry://{proxy.host}/{seeded.prefix}/alpha:1.0.0",
        )
        assert not proxy.requests_matching(r"/manifests/", "GET")  # a HEAD: no pull spent
        host = proxy.host
    assert json.loads(shown.stdout) == {
        "registry": host,
        "limit": 100,
        "remaining": 100,
        "window": 21600,
    }


# -- on a Dask cluster -------------------------------------------------------------------


def _copied_digests(registry, prefix: str, wanted) -> dict[tuple[str, str], str]:
    return {
        (repo, tag): skopeo_inspect(registry, f"{prefix}/{repo}:{tag}")["Digest"]
        for repo, tag in wanted
    }


ALL_TAGS = [(repo, tag) for repo, tags in SEEDED.items() for tag in tags]


def test_a_sync_over_a_dask_cluster_matches_the_embedded_run(
    seeded, mirror, dask_cluster, tmp_path
):
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix

    def spec_for(target: str) -> Path:
        rule = {"source": f"registry://{src}/{prefix}/*a", "target": f"registry://{dst}/{target}"}
        return write_yaml(tmp_path / f"{target.replace('/', '_')}.yaml", {"sync": [rule]})

    # No blob cache: each run finds where blobs went by itself (the cluster through the
    # scheduler), so both upload each blob once.
    embedded = run_occystrap(
        "--insecure",
        "--no-cache",
        "sync",
        str(spec_for(f"{prefix}-embedded")),
        "--report",
        str(tmp_path / "e.json"),
        timeout=300,
    )
    clustered = run_occystrap(
        "--insecure",
        "--no-cache",
        "sync",
        str(spec_for(f"{prefix}-cluster")),
        "--cluster",
        dask_cluster.address,
        "--report",
        str(tmp_path / "c.json"),
        timeout=300,
    )
    assert "failed" not in embedded.stdout + clustered.stdout
    uploads = [re.search(r"blobs (\d+) uploaded", run.stderr) for run in (embedded, clustered)]
    assert uploads[0] and uploads[1] and uploads[0].group(1) == uploads[1].group(1), (
        embedded.stderr,
        clustered.stderr,
    )
    ran = json.loads((tmp_path / "c.json").read_text())
    assert {entry["status"] for entry in ran} == {"copied"} and len(ran) == len(ALL_TAGS)
    wanted = ALL_TAGS
    on_cluster = _copied_digests(mirror, f"{prefix}-cluster", wanted)
    assert on_cluster == _copied_digests(mirror, f"{prefix}-embedded", wanted)
    assert on_cluster == {key: seeded.digest(*key) for key in wanted}
    # The copies ran on the workers, each with a session of its own, closed at the end.
    logs = "".join(p.read_text() for p in dask_cluster.workdir.glob("worker-*.log"))
    assert "Traceback" not in logs
    assert logs.count("Run out-of-band function 'close_worker_run'") >= 2
    again = sync(str(spec_for(f"{prefix}-cluster")), "--cluster", dask_cluster.address)
    assert set(result_lines(again.stdout).values()) == {"unchanged"}


def test_a_worker_killed_mid_sync_and_the_sync_still_completes(
    seeded, mirror, dask_cluster, tmp_path
):
    """A third worker joins, then a worker is SIGKILLed while it copies; its task runs again
    on another worker and every image ends at the target, verified by skopeo. (The cluster
    keeps two workers for the tests after this one.)"""
    src, dst, prefix = seeded.registry.host, mirror.host, seeded.prefix
    dask_cluster.add_worker()
    dask_cluster.wait_for_workers(3)
    pids = dask_cluster.worker_pids()
    rule = {"source": f"registry://{src}/{prefix}/*a", "target": f"registry://{dst}/{prefix}-k"}
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "occystrap", "--insecure", "--rate-limit", "40", "sync",
        str(spec), "--cluster", dask_cluster.address, "--report", str(report),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with dask_cluster.client() as watcher:
        running = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        busy: str | None = None
        while busy is None and time.monotonic() < deadline:
            assert running.poll() is None, running.communicate()
            busy = next(
                (
                    address
                    for address, keys in watcher.processing().items()
                    if any(str(key).startswith("occystrap-copy-") for key in keys)
                ),
                None,
            )
            time.sleep(0.01)
        assert busy is not None, "no copy ever ran"
        victim = next(worker for worker in dask_cluster.workers if worker.pid == pids[busy])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        out, err = running.communicate(timeout=240)
    assert running.returncode == 0, err.decode()
    entries = json.loads(report.read_text())
    assert {entry["status"] for entry in entries} == {"copied"}, entries
    assert _copied_digests(mirror, f"{prefix}-k", ALL_TAGS) == {
        key: seeded.digest(*key) for key in ALL_TAGS
    }


def test_the_rate_limit_holds_for_the_whole_cluster(seeded, mirror, dask_cluster, tmp_path):
    """Two workers of two threads each, and the planner here, share one --rate-limit: the
    source never sees a one-second window over it (one request of slack for arrival
    jitter)."""
    rate = 8
    with FaultProxy(seeded.registry.url) as proxy:
        rule = {
            "source": f"registry://{proxy.host}/{seeded.prefix}/*a",
            "target": f"registry://{mirror.host}/{seeded.prefix}-r",
        }
        spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
        run_occystrap(
            "--insecure",
            "--rate-limit",
            f"{proxy.host}={rate}",
            "sync",
            str(spec),
            "--cluster",
            dask_cluster.address,
            timeout=300,
        )
        times = sorted(request.at for request in proxy.requests)
    assert len(times) > 3 * rate  # enough requests that separate limiters would show
    busiest = max(
        sum(1 for later in times[index:] if later < start + 1.0)
        for index, start in enumerate(times)
    )
    assert busiest <= rate + 2, busiest


def test_air_gap_into_oci_layouts_then_nothing_to_do(seeded, tmp_path):
    """A catalog glob into oci-layout://: one layout per repository, each tag under its
    ref.name with the source's digest (skopeo reads them); a second run finds them there."""
    src, prefix = seeded.registry.host, seeded.prefix
    layouts = tmp_path / "transfer"
    rule = {
        "source": f"registry://{src}/{prefix}/team/*",
        "target": f"oci-layout://{layouts}",
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    first = sync(str(spec))
    assert set(result_lines(first.stdout).values()) == {"copied"}, first.stdout
    # skopeo 1.9 reads only OCI media types from a layout and these are Docker v2s2, kept
    # byte for byte: the test reads the layout itself, every manifest and blob hashed.
    for repository in ("gamma", "delta"):
        layout = layouts / repository
        index = json.loads((layout / "index.json").read_text())
        held = {
            entry["annotations"]["org.opencontainers.image.ref.name"]: entry["digest"]
            for entry in index["manifests"]
        }
        assert held == {
            tag: seeded.digest(f"team/{repository}", tag) for tag in SEEDED[f"team/{repository}"]
        }
        for digest in held.values():
            manifest = json.loads(layout_blob(layout, digest))
            for descriptor in [manifest["config"], *manifest["layers"]]:
                layout_blob(layout, descriptor["digest"])
    second = sync(str(spec))
    assert set(result_lines(second.stdout).values()) == {"unchanged"}, second.stdout


def push_sharing_images(registry: RegistryServer, repository: str, tags, workdir: Path) -> None:
    """One OCI image per tag (`tags`: tag -> seed of its own layer; one seed, one image),
    all on one shared base layer, pushed by skopeo."""
    base = random_layer(3000, 70)
    for tag, seed in tags.items():
        layout = workdir / f"image-{seed}"
        if not layout.exists():
            build_oci_layout(layout, [base, random_layer(2000, seed)])
        push_with_skopeo(layout, registry, repository, tag, manifest_format="oci")


def sync_sharing_images_into_a_layout(
    seeded: Seeded, name: str, tags, workdir: Path
) -> tuple[Path, dict, Path]:
    """`push_sharing_images` into the source's NAME, synced into the layout directory
    workdir/mirror: the layout, the sync rule and the spec file holding it."""
    repository = f"{seeded.prefix}/{name}"
    push_sharing_images(seeded.registry, repository, tags, workdir)
    layout = workdir / "mirror"
    rule = {
        "source": f"registry://{seeded.registry.host}/{repository}",
        "target": f"oci-layout://{layout}",
    }
    spec = write_yaml(workdir / "sync.yaml", {"sync": [rule]})
    sync(str(spec))
    return layout, rule, spec


def test_prune_in_a_layout_directory_removes_the_tag_and_its_own_blobs(seeded, tmp_path):
    """A tag no rule keeps leaves the layout's index.json, and the blobs only it used leave
    blobs/sha256; the shared layer and the kept tag stay whole (skopeo copies it out). A dry
    run lists the prune and changes nothing."""
    layout, rule, spec = sync_sharing_images_into_a_layout(
        seeded, "layout-prune", {"keep": 71, "drop": 72}, tmp_path
    )
    tags = layout_index_tags(layout)
    assert tags == {tag: seeded.digest("layout-prune", tag) for tag in ("keep", "drop")}
    kept_blobs = layout_image_blobs(layout, tags["keep"])
    dropped_blobs = layout_image_blobs(layout, tags["drop"])
    shared = kept_blobs & dropped_blobs
    assert len(shared) == 1 and layout_blob_files(layout) == kept_blobs | dropped_blobs

    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^keep$"]}}]})
    index_before = (layout / "index.json").read_bytes()
    planned = sync("--dry-run", "--prune", str(spec))
    assert result_lines(planned.stdout) == {
        f"oci-layout://{layout}?tag=keep": "unchanged",
        f"oci-layout://{layout}?tag=drop": "prune",
    }, planned.stdout
    assert (layout / "index.json").read_bytes() == index_before
    assert layout_blob_files(layout) == kept_blobs | dropped_blobs

    pruned = sync(str(spec), "--prune")
    assert result_lines(pruned.stdout) == {
        f"oci-layout://{layout}?tag=keep": "unchanged",
        f"oci-layout://{layout}?tag=drop": "pruned",
    }, pruned.stdout
    assert layout_index_tags(layout) == {"keep": tags["keep"]}
    assert layout_blob_files(layout) == kept_blobs  # drop's own blobs gone, the shared one kept
    assert not (dropped_blobs - shared) & layout_blob_files(layout)
    with pytest.raises(AssertionError, match=r'no descriptor found for reference \\"drop\\"'):
        run_skopeo("inspect", f"oci:{layout}:drop")
    assert skopeo_copy_out_of_layout(layout, "keep", tmp_path / "out") == tags["keep"]
    again = sync(str(spec), "--prune")
    assert result_lines(again.stdout) == {f"oci-layout://{layout}?tag=keep": "unchanged"}


def test_a_layout_tag_sharing_a_manifest_with_a_kept_tag_is_kept(seeded, tmp_path):
    """As in a registry, a stale tag on the manifest of a tag that stays is reported `kept`
    (plan and run) and the layout is left exactly as it was."""
    layout, rule, spec = sync_sharing_images_into_a_layout(
        seeded, "layout-shared", {"a": 73, "b": 73}, tmp_path
    )
    digest = seeded.digest("layout-shared", "a")
    assert layout_index_tags(layout) == {"a": digest, "b": digest}
    files = layout_blob_files(layout)
    index_before = (layout / "index.json").read_bytes()

    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^a$"]}}]})
    planned = run_occystrap("--insecure", "-O", "json", "sync", "--dry-run", "--prune", str(spec))
    plan = {image["target"]: image for image in json.loads(planned.stdout)}
    stale = plan[f"oci-layout://{layout}?tag=b"]
    assert (stale["action"], stale["error"], stale["digest"]) == (
        "kept",
        "shares manifest with a",
        digest,
    ), planned.stdout
    run = sync(str(spec), "--prune")
    assert f"kept      oci-layout://{layout}?tag=b {digest}: shares manifest with a" in run.stdout
    assert "0 pruned, 1 kept" in run.stderr, run.stderr
    assert (layout / "index.json").read_bytes() == index_before
    assert layout_blob_files(layout) == files
    assert skopeo_copy_out_of_layout(layout, "b", tmp_path / "out") == digest


def test_an_interrupted_layout_prune_is_finished_by_the_next_prune(seeded, tmp_path):
    """A delete that fails after drop's entry left index.json (its own layer is, for the
    test, a directory, which unlink refuses even to root) leaves the prune journal; the next
    `sync --prune` finishes it: the layer a newly synced tag reaches stays, every other blob
    nothing reaches is gone, and the journal too (read from the directory by this test)."""
    layout, rule, spec = sync_sharing_images_into_a_layout(
        seeded, "layout-journal", {"keep": 75, "drop": 76}, tmp_path
    )
    tags = layout_index_tags(layout)
    layers = json.loads(layout_blob(layout, tags["drop"]))["layers"]
    (own_digest,) = {layer["digest"] for layer in layers} - layout_image_blobs(layout, tags["keep"])
    layer_file = layout / "blobs" / "sha256" / own_digest.partition(":")[2]
    layer_bytes = layer_file.read_bytes()
    layer_file.unlink()
    (layer_file / "in-the-way").mkdir(parents=True)

    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^(keep|new)$"]}}]})
    cut_short = sync(str(spec), "--prune", check=False)
    assert cut_short.returncode != 0
    assert result_lines(cut_short.stdout)[f"oci-layout://{layout}?tag=drop"] == "failed"
    assert layout_index_tags(layout) == {"keep": tags["keep"]}
    (candidates,) = json.loads((layout / "occystrap-prune.json").read_text()).values()
    assert own_digest in candidates
    assert set(candidates) <= layout_blob_files(layout)  # those deleted already are not

    shutil.rmtree(layer_file)
    layer_file.write_bytes(layer_bytes)
    new = tmp_path / "image-new"
    build_oci_layout(new, [random_layer(2000, 76), random_layer(1000, 77)])  # drop's layer
    push_with_skopeo(new, seeded.registry, f"{seeded.prefix}/layout-journal", "new", "oci")
    before = layout_blob_files(layout)
    finished = sync(str(spec), "--prune")
    after = layout_blob_files(layout)
    assert f"finished an interrupted prune: {len(before - after)} blobs deleted" in finished.stdout
    assert after == layout_reachable_blobs(
        layout
    )  # nothing reachable went, nothing unreachable stayed
    assert own_digest in layout_image_blobs(layout, layout_index_tags(layout)["new"])
    assert own_digest in after and tags["drop"] not in after
    assert not (layout / "occystrap-prune.json").exists()
    assert skopeo_copy_out_of_layout(layout, "new", tmp_path / "out") == seeded.digest(
        "layout-journal", "new"
    )


def test_prune_in_a_layout_takes_the_referrers_of_the_pruned_image_along(seeded, tmp_path):
    """Synced with referrers: the pruned image's SBOM (referrers tag index) and cosign
    signature leave the layout with it, their blobs too; the kept image keeps its SBOM. The
    dry run lists them as prune lines and changes nothing."""
    repository = f"{seeded.prefix}/layout-referrers"
    with seeded.registry.client() as http:
        writer = RegistryWriter(http, repository)
        keep, drop = writer.image("keep", tag="keep"), writer.image("drop", tag="drop")
        kept_sbom, dropped_sbom = writer.sbom(keep), writer.sbom(drop, name="drop.spdx.json")
        signature = writer.cosign_sign(drop, signing_key(), f"{seeded.registry.host}/{repository}")
    layout = tmp_path / "mirror"
    rule = {
        "source": f"registry://{seeded.registry.host}/{repository}",
        "target": f"oci-layout://{layout}",
        "referrers": True,
        "tags": {"allow": ["^(keep|drop)$"]},
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    sync(str(spec))
    assert set(layout_index_tags(layout)) == {
        "keep",
        "drop",
        tag_for(keep.digest),
        tag_for(drop.digest),
        tag_for(drop.digest, ".sig"),
    }
    tags_before, before = layout_index_tags(layout), layout_blob_files(layout)
    assert before == layout_reachable_blobs(layout)
    for referrer in (kept_sbom, dropped_sbom, signature):
        assert referrer.digest in before

    write_yaml(spec, {"sync": [{**rule, "tags": {"allow": ["^keep$"]}}]})
    going = {
        f"oci-layout://{layout}?tag={tag}"
        for tag in ("drop", tag_for(drop.digest), tag_for(drop.digest, ".sig"))
    }
    index_before = (layout / "index.json").read_bytes()
    planned = sync("--dry-run", "--prune", str(spec))
    assert result_lines(planned.stdout) == {
        f"oci-layout://{layout}?tag=keep": "unchanged",
        **dict.fromkeys(going, "prune"),
    }, planned.stdout
    assert (layout / "index.json").read_bytes() == index_before
    assert layout_blob_files(layout) == before
    pruned = sync(str(spec), "--prune")
    assert result_lines(pruned.stdout) == {
        f"oci-layout://{layout}?tag=keep": "unchanged",
        **dict.fromkeys(going, "pruned"),
    }, pruned.stdout
    kept_index = tags_before[tag_for(keep.digest)]
    assert layout_index_tags(layout) == {"keep": keep.digest, tag_for(keep.digest): kept_index}
    after = layout_blob_files(layout)
    assert after == layout_reachable_blobs(
        layout
    )  # nothing reachable went, nothing unreachable stayed
    assert {kept_sbom.digest, kept_index, digest_of(b"{}")} <= after  # the empty config: shared
    dropped = [drop, dropped_sbom, signature]
    assert not {pushed.digest for pushed in dropped} & after
    assert not {blob["digest"] for pushed in dropped for blob in _own_blobs(pushed)} & after
    assert skopeo_copy_out_of_layout(layout, "keep", tmp_path / "out") == keep.digest


def _own_blobs(pushed) -> list[dict]:
    """A pushed manifest's config and layers, but the empty config artifacts share."""
    document = json.loads(pushed.raw)
    return [blob for blob in [document["config"], *document["layers"]] if blob["size"] > 2]


def test_upload_restarts_draw_on_the_retry_budget(seeded, mirror, tmp_path):
    """Issue 19: every upload PUT at the target fails; --retries 0 leaves the chain no retry
    to make, so only session restarts (3 sessions a blob) were left, and they spent no
    budget: all 11 images were tried, 3 sessions a blob. With a budget of 1, one restart in
    all, then what is in flight fails and the rest is deferred."""
    with FaultProxy(mirror.url) as proxy:
        proxy.fail_next(1000, status=500, path=r"/blobs/uploads/.+", method="PUT")
        rule = {
            "source": f"registry://{seeded.registry.host}/{seeded.prefix}/*a",
            "target": f"registry://{proxy.host}/{seeded.prefix}-restarts",
        }
        spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
        report = tmp_path / "report.json"
        result = run_occystrap(
            "--insecure", "--retries", "0", "sync", str(spec), "-J", "1", "--keep-going",
            "--retry-budget", "1", "--report", str(report), check=False, timeout=300,
        )  # fmt: skip
        sessions = proxy.requests_matching(r"/blobs/uploads/$", method="POST")
    assert result.returncode != 0
    entries = json.loads(report.read_text())
    statuses = [entry["status"] for entry in entries]
    assert statuses.count("failed") == 1 and set(statuses) == {"failed", "deferred"}, statuses
    deferred = [entry for entry in entries if entry["status"] == "deferred"]
    assert all("retry budget" in entry["error"] for entry in deferred), entries
    # the first image's blobs (config and two layers) once each, and the one restart
    assert len(sessions) <= 4, len(sessions)
    assert "1 retry" in result.stderr, result.stderr


def test_a_retry_budget_stops_a_run_against_a_failing_registry(seeded, mirror, tmp_path):
    """Every blob read fails with 503: after --retry-budget retries in all the run stops
    retrying, fails what is in flight and starts nothing more."""
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.fail_next(1000, status=503, path=r"/blobs/")
        rule = {
            "source": f"registry://{proxy.host}/{seeded.prefix}/*a",
            "target": f"registry://{mirror.host}/{seeded.prefix}-b2",
        }
        spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
        report = tmp_path / "report.json"
        result = run_occystrap(
            "--insecure", "--retries", "5", "sync", str(spec), "-J", "1", "--keep-going",
            "--retry-budget", "3", "--report", str(report), check=False, timeout=300,
        )  # fmt: skip
        failed_reads = len([r for r in proxy.requests if r.action == "failed"])
    assert result.returncode != 0
    statuses = [entry["status"] for entry in json.loads(report.read_text())]
    assert "failed" in statuses and "deferred" in statuses and "copied" not in statuses
    deferred = json.loads(report.read_text())[statuses.index("deferred")]
    assert "retry budget" in deferred["error"]
    # The budget caps the chain's retries (3 in all, not 5 per read of every image); what
    # else failed is first attempts of the first image's concurrent reads and its upload
    # restarts. Without the budget: 11 images x 3 blobs x 6 attempts, at least.
    assert "3 retries" in result.stderr, result.stderr
    assert failed_reads < 20, failed_reads


def test_platforms_narrow_an_index_and_the_plan_knows_the_narrowed_digest(seeded, mirror, tmp_path):
    """A two-platform image synced with platforms: [linux/arm64] is narrowed at the target;
    the next plan computes that same digest, so it is unchanged, not copied again."""
    repository = f"{seeded.prefix}/multi"
    layout = tmp_path / "multi"
    build_multiarch_layout(
        layout,
        {
            ("linux", "amd64"): [random_layer(2000, 21)],
            ("linux", "arm64"): [random_layer(2000, 22)],
        },
    )
    push_multiarch_with_skopeo(layout, seeded.registry, repository, "1")
    rule = {
        "source": f"registry://{seeded.registry.host}/{repository}",
        "target": f"registry://{mirror.host}/{seeded.prefix}-p/multi",
        "platforms": ["linux/arm64"],
    }
    spec = write_yaml(tmp_path / "sync.yaml", {"sync": [rule]})
    report = tmp_path / "report.json"
    sync(str(spec), "--report", str(report))
    (copied,) = json.loads(report.read_text())
    assert copied["status"] == "copied"
    # One platform kept: the target holds that platform's manifest itself.
    written = skopeo_inspect(mirror, f"{seeded.prefix}-p/multi:1")
    assert written["Architecture"] == "arm64" and written["Digest"] == copied["digest"]
    again = sync(str(spec))
    assert set(result_lines(again.stdout).values()) == {"unchanged"}, again.stdout
