"""OCI layouts in buckets: s3:// against moto's server (every request SigV4-checked), through
the installed occystrap-aws plug-in. Registry -> bucket -> registry keeps every digest, and
skopeo reads the layout the bucket holds."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from tests.integration.cli import REPO_ROOT, assert_one_line_error, run_occystrap
from tests.integration.images import (
    build_oci_layout,
    layout_blob,
    layout_blob_files,
    layout_image_blobs,
    layout_index_tags,
    layout_reachable_blobs,
    push_with_skopeo,
    random_layer,
    run_skopeo,
    skopeo_copy_out_of_layout,
    skopeo_inspect,
)

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture
def s3_env(moto, cloud_plugins) -> dict[str, str]:
    return {**moto.env(), "PYTHONPATH": f"{cloud_plugins}{os.pathsep}{REPO_ROOT}"}


@pytest.fixture
def bucket(moto, request) -> str:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    moto.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    return name


def _download_prefix(moto, bucket: str, prefix: str, target: Path) -> None:
    """The bucket's layout as a directory, read with boto3, for skopeo to judge."""
    s3 = moto.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            path = target / item["Key"][len(prefix) + 1 :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())


def _seed(registry, repo: str, tmp_path: Path, big: int) -> dict:
    layout = tmp_path / "seed"
    descriptor = build_oci_layout(
        layout, [random_layer(big, seed=30), random_layer(4096, seed=31, name="small.bin")]
    )
    push_with_skopeo(layout, registry, repo, "v1", manifest_format="oci")
    return descriptor


def _copy_in_debug(registry, repo: str, destination: str, env: dict[str, str]):
    """`process --debug -O json` of REPO:v1 from the registry into a bucket (its log shows
    each request)."""
    return run_occystrap(
        "--insecure",
        "--debug",
        "-O",
        "json",
        "process",
        f"registry://{registry.host}/{repo}:v1",
        destination,
        env=env,
    )


def _uploaded(copy) -> int:
    """The bytes a copy's -O json says the destination stored."""
    return json.loads(copy.stdout)["bytes"]["uploaded"]


def _blob_bytes(manifest: dict) -> int:
    """The config's and layers' sizes: what a first copy into a layout stores."""
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def _assert_copies_back(
    registry, repo: str, source: str, env: dict[str, str], original_digest: str, original
) -> None:
    """The image at `source`, copied into the registry as REPO-back:v1, is the original
    byte for byte (`original`: its raw manifest)."""
    back = f"{repo}-back"
    run_occystrap("--insecure", "process", source, f"registry://{registry.host}/{back}:v1", env=env)
    assert skopeo_inspect(registry, f"{back}:v1")["Digest"] == original_digest
    assert skopeo_inspect(registry, f"{back}:v1", raw=True) == original


def test_registry_to_s3_and_back_keeps_every_digest(
    moto, s3_env, bucket, registry_plain, unique_repo, tmp_path
):
    _seed(registry_plain, unique_repo, tmp_path, big=PART + MIB)  # over the part size
    original = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    original_digest = skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]
    destination = f"s3://{bucket}/images?part_size=5MiB"

    first = _copy_in_debug(registry_plain, unique_repo, destination, s3_env)
    assert "SigV4Signing" in first.stderr
    assert "partNumber=2" in first.stderr  # the big layer went up in parts
    assert moto.secret_key not in first.stderr
    assert _uploaded(first) == _blob_bytes(original)  # blobs as stored, once, not the manifest

    local = tmp_path / "from-bucket"
    _download_prefix(moto, bucket, "images", local)
    inspected = run_skopeo("inspect", f"oci:{local}:v1").stdout
    assert original_digest in inspected

    again = _copy_in_debug(registry_plain, unique_repo, destination, s3_env)
    writes = [line for line in again.stderr.splitlines() if " PUT " in line or " POST " in line]
    assert len(writes) == 1 and "/images/index.json" in writes[0]  # a second copy: the index
    assert _uploaded(again) == 0

    _assert_copies_back(
        registry_plain,
        unique_repo,
        f"s3://{bucket}/images?tag=v1",
        s3_env,
        original_digest,
        original,
    )


def test_cut_multipart_upload_resumes_with_the_missing_parts(moto, s3_env, bucket, tmp_path):
    """An earlier run died after uploading the first part: the next one finds the unfinished
    upload, keeps that part and sends only the rest."""
    layout = tmp_path / "layout"
    descriptor = build_oci_layout(layout, [random_layer(PART + MIB, seed=32)], compression="none")
    manifest = (layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_bytes()
    layer = json.loads(manifest)["layers"][0]
    blob = (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
    key = f"cut/blobs/sha256/{layer['digest'].split(':')[1]}"
    s3 = moto.client("s3")
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=blob[:PART])

    result = run_occystrap(
        "--debug",
        "process",
        f"oci-layout://{layout}",
        f"s3://{bucket}/cut?part_size=5MiB",
        env=s3_env,
    )
    assert "resuming the upload" in result.stderr
    assert "partNumber=1&" not in result.stderr
    assert "partNumber=2&" in result.stderr
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == layer["digest"].split(":")[1]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_missing_bucket_is_one_line(s3_env, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=33)])
    result = run_occystrap(
        "process", f"oci-layout://{layout}", "s3://no-such-bucket/x", env=s3_env, check=False
    )
    assert_one_line_error(result, "s3://no-such-bucket/x", "NoSuchBucket")


def test_wrong_secret_is_refused_by_moto(moto, s3_env, bucket, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(1024, seed=34)])
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "Zq9NotTheSecret"}
    result = run_occystrap(
        "process", f"oci-layout://{layout}", f"s3://{bucket}/x", env=env, check=False
    )
    assert_one_line_error(result, f"s3://{bucket}/x", "HTTP 403")
    assert "Zq9NotTheSecret" not in result.stderr


def test_registry_to_gcs_and_back_keeps_every_digest(
    gcs, google_account, google_oauth, cloud_plugins, registry_plain, unique_repo, tmp_path
):
    bucket = "occystrap-gcs-round-trip"
    gcs.create_bucket(bucket)
    _seed(registry_plain, unique_repo, tmp_path, big=PART + MIB)
    original = skopeo_inspect(registry_plain, f"{unique_repo}:v1", raw=True)
    original_digest = skopeo_inspect(registry_plain, f"{unique_repo}:v1")["Digest"]
    key_file = google_account.key_file(tmp_path / "key.json", f"{google_oauth.url}/token")
    env = {
        "PYTHONPATH": f"{cloud_plugins}{os.pathsep}{REPO_ROOT}",
        "STORAGE_EMULATOR_HOST": gcs.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }
    grants = len(google_oauth.grants)
    destination = f"gs://{bucket}/images?part_size=5MiB"

    first = _copy_in_debug(registry_plain, unique_repo, destination, env)
    assert "GcsAccessToken" in first.stderr
    assert "uploadType=resumable" in first.stderr  # the big layer went up in parts
    assert len(google_oauth.grants) - grants == 1  # one token for the whole run
    assert _uploaded(first) == _blob_bytes(original)

    local = tmp_path / "from-bucket"
    for name, data in gcs.objects(bucket, "images/").items():
        path = local / name[len("images/") :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert original_digest in run_skopeo("inspect", f"oci:{local}:v1").stdout

    again = _copy_in_debug(registry_plain, unique_repo, destination, env)
    uploads = [line for line in again.stderr.splitlines() if "/upload/storage/" in line]
    assert len(uploads) == 1 and "index.json" in uploads[0], uploads  # only the index again
    assert _uploaded(again) == 0

    _assert_copies_back(
        registry_plain, unique_repo, f"gs://{bucket}/images?tag=v1", env, original_digest, original
    )


def test_concurrent_writers_keep_each_others_index_entries(moto, s3_env, bucket, tmp_path):
    """Writers adding images to one bucket layout at once: index.json is replaced only on
    the version each read, so every tag survives."""
    import subprocess
    import sys

    tags = [f"t{number}" for number in range(4)]
    processes = []
    for number, tag in enumerate(tags):
        layout = tmp_path / tag
        build_oci_layout(layout, [random_layer(2048, seed=40 + number)])
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "occystrap",
                    "process",
                    f"oci-layout://{layout}",
                    f"s3://{bucket}/shared?tag={tag}",
                ],
                env={**os.environ, **s3_env},
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    index = json.loads(
        moto.client("s3").get_object(Bucket=bucket, Key="shared/index.json")["Body"].read()
    )
    names = sorted(
        entry["annotations"]["org.opencontainers.image.ref.name"] for entry in index["manifests"]
    )
    assert names == tags


def test_referrers_cross_through_a_bucket(
    moto, s3_env, bucket, registry_plain, registry_basic, unique_repo
):
    """Signatures and SBOMs go registry -> s3:// -> registry with the image, checked by the
    tests' own reader against the destination registry."""
    from tests.integration.signing import signing_key
    from tests.integration.test_referrers import _check_signed_copy, _signed_index

    key = signing_key()
    pushed = _signed_index(registry_plain, unique_repo, key)
    run_occystrap(
        "--insecure",
        "process",
        "--referrers",
        f"registry://{registry_plain.host}/{unique_repo}:v1",
        f"s3://{bucket}/signed",
        env=s3_env,
    )
    result = run_occystrap(
        "--insecure",
        "--dest-creds",
        f"{registry_basic.username}:{registry_basic.password}",
        "process",
        "--referrers",
        f"s3://{bucket}/signed?tag=v1",
        f"registry://{registry_basic.host}/{unique_repo}-from-bucket:v1",
        env=s3_env,
    )
    assert "4 referrers" in result.stderr.splitlines()[-1], result.stderr
    auth = (registry_basic.username, registry_basic.password)
    with registry_basic.client(auth=auth) as http:
        _check_signed_copy(http, f"{unique_repo}-from-bucket", pushed, key)


def test_artifact_round_trip_through_a_bucket(moto, s3_env, bucket, tmp_path):
    """artifact push into s3:// (no ?tag=: `latest`, as into a layout directory) and pull
    back: the file comes out as it went in, under the digest push reported."""
    source = tmp_path / "sbom.spdx.json"
    source.write_text('{"spdxVersion": "SPDX-2.3"}')
    pushed = run_occystrap(
        "artifact",
        "push",
        f"s3://{bucket}/artifacts",
        f"{source}:application/spdx+json",
        "--artifact-type",
        "application/spdx+json",
        env=s3_env,
    )
    out = tmp_path / "out"
    pulled = run_occystrap(
        "artifact", "pull", f"s3://{bucket}/artifacts?tag=latest", str(out), env=s3_env
    )
    assert (out / "sbom.spdx.json").read_text() == source.read_text()
    digest = re.search(r"sha256:[0-9a-f]{64}", pushed.stdout + pushed.stderr)
    assert digest is not None and digest.group(0) in pulled.stdout + pulled.stderr


def test_a_cut_download_from_s3_resumes_with_range(moto, s3_env, bucket, tmp_path):
    """The connection drops in the middle of a layer: the read goes on from where it stopped
    (Range), through a fault proxy in front of moto, and the copy is whole."""
    from tests.integration.fault_proxy import FaultProxy

    layout = tmp_path / "layout"
    descriptor = build_oci_layout(layout, [random_layer(3 * MIB, seed=50)], compression="none")
    manifest = (layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_bytes()
    layer = json.loads(manifest)["layers"][0]["digest"].split(":")[1]
    run_occystrap("process", f"oci-layout://{layout}", f"s3://{bucket}/ranged", env=s3_env)
    with FaultProxy(moto.url) as proxy:
        proxy.cut_after(rf"^/{bucket}/ranged/blobs/sha256/{layer}$", MIB)
        env = {**s3_env, "AWS_ENDPOINT_URL": proxy.url}
        out = tmp_path / "back"
        run_occystrap("process", f"s3://{bucket}/ranged", f"oci-layout://{out}", env=env)
        ranges = proxy.range_headers
    assert any(value.startswith("bytes=") and value != "bytes=0-" for value in ranges), ranges
    assert descriptor["digest"] in run_skopeo("inspect", f"oci:{out}:latest").stdout


def _seed_repositories(registry, prefix: str, tmp_path: Path, tags: dict[str, list[str]]) -> dict:
    """Small images pushed by skopeo as PREFIX/NAME:TAG; (NAME, TAG) -> digest."""
    digests = {}
    for seed, (name, names) in enumerate(tags.items()):
        for offset, tag in enumerate(names):
            layout = tmp_path / f"seed-{name}-{tag}"
            build_oci_layout(layout, [random_layer(4096, seed=60 + 10 * seed + offset)])
            push_with_skopeo(layout, registry, f"{prefix}/{name}", tag, manifest_format="oci")
            digests[name, tag] = skopeo_inspect(registry, f"{prefix}/{name}:{tag}")["Digest"]
    return digests


def _sync(spec: Path, env: dict[str, str], *args: str, check: bool = True):
    return run_occystrap("--insecure", "sync", str(spec), *args, env=env, check=check)


def test_sync_into_s3_then_nothing_to_do(
    moto, s3_env, bucket, registry_plain, unique_repo, tmp_path
):
    """A catalog glob synced into s3://: one layout per repository under the prefix, each
    tag as skopeo reads it; the next run reads each layout's index.json once and writes
    nothing (a fault proxy in front of moto sees every request)."""
    digests = _seed_repositories(
        registry_plain, unique_repo, tmp_path, {"a": ["1", "2"], "b": ["1"]}
    )
    spec = tmp_path / "sync.yaml"
    rule = {"source": f"registry://{registry_plain.host}/{unique_repo}/*"}
    spec.write_text(json.dumps({"sync": [{**rule, "target": f"s3://{bucket}/mirror"}]}))
    report = tmp_path / "report.json"
    first = _sync(spec, s3_env, "--report", str(report))
    statuses = {entry["target"]: entry["status"] for entry in json.loads(report.read_text())}
    assert statuses == {
        f"s3://{bucket}/mirror/{name}?tag={tag}": "copied" for name, tag in digests
    }, first.stdout
    for name in ("a", "b"):
        local = tmp_path / f"from-bucket-{name}"
        _download_prefix(moto, bucket, f"mirror/{name}", local)
        for (held_name, tag), digest in digests.items():
            if held_name == name:
                assert skopeo_inspect_layout(local, tag) == digest

    from tests.integration.fault_proxy import FaultProxy

    with FaultProxy(moto.url) as proxy:
        again = _sync(spec, {**s3_env, "AWS_ENDPOINT_URL": proxy.url}, "--report", str(report))
        seen = [(request.method, request.path.partition("?")[0]) for request in proxy.requests]
    assert {entry["status"] for entry in json.loads(report.read_text())} == {"unchanged"}, again
    assert sorted(seen) == [
        ("GET", f"/{bucket}/mirror/a/index.json"),
        ("GET", f"/{bucket}/mirror/b/index.json"),
    ]

    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(json.dumps({"sync": [{**rule, "target": f"s3://{bucket}/x?tag=v1"}]}))
    assert_one_line_error(_sync(tagged, s3_env, check=False), "names a tag")


def test_sync_into_gcs(
    gcs, google_account, google_oauth, cloud_plugins, registry_plain, unique_repo, tmp_path
):
    bucket = "occystrap-gcs-sync"
    gcs.create_bucket(bucket)
    digests = _seed_repositories(registry_plain, unique_repo, tmp_path, {"app": ["1", "2"]})
    key_file = google_account.key_file(tmp_path / "key.json", f"{google_oauth.url}/token")
    env = {
        "PYTHONPATH": f"{cloud_plugins}{os.pathsep}{REPO_ROOT}",
        "STORAGE_EMULATOR_HOST": gcs.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }
    spec = tmp_path / "sync.yaml"
    rule = {
        "source": f"registry://{registry_plain.host}/{unique_repo}/app",
        "target": f"gs://{bucket}/images",
    }
    spec.write_text(json.dumps({"sync": [rule]}))
    report = tmp_path / "report.json"
    _sync(spec, env, "--report", str(report))
    assert {entry["status"] for entry in json.loads(report.read_text())} == {"copied"}
    local = tmp_path / "from-bucket"
    for name, data in gcs.objects(bucket, "images/").items():
        path = local / name[len("images/") :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for (_, tag), digest in digests.items():
        assert skopeo_inspect_layout(local, tag) == digest
    _sync(spec, env, "--report", str(report))
    assert {entry["status"] for entry in json.loads(report.read_text())} == {"unchanged"}


def _seed_sharing(registry, repo: str, tmp_path: Path) -> None:
    """REPO:keep and REPO:drop, OCI images on one shared base layer, pushed by skopeo."""
    base = random_layer(3000, seed=80)
    for tag, seed in (("keep", 81), ("drop", 82)):
        layout = tmp_path / f"seed-{tag}"
        build_oci_layout(layout, [base, random_layer(2000, seed=seed)])
        push_with_skopeo(layout, registry, repo, tag, manifest_format="oci")


def _prune_a_bucket_layout(
    registry, repo: str, target: str, env: dict[str, str], download, tmp_path: Path
) -> None:
    """Sync keep and drop into the bucket layout `target`, drop `drop` from the file, sync
    with --prune; `download(directory)` copies the layout out of the bucket with the cloud's
    own client. The dropped tag and the blobs only it used are gone, the shared layer and
    the kept tag stay (skopeo copies it out whole)."""
    _seed_sharing(registry, repo, tmp_path)
    spec = tmp_path / "sync.yaml"
    rule = {"source": f"registry://{registry.host}/{repo}", "target": target}
    spec.write_text(json.dumps({"sync": [rule]}))
    _sync(spec, env)
    before = tmp_path / "before"
    download(before)
    tags = layout_index_tags(before)
    assert tags == {tag: skopeo_inspect(registry, f"{repo}:{tag}")["Digest"] for tag in tags}
    assert set(tags) == {"keep", "drop"}
    kept_blobs = layout_image_blobs(before, tags["keep"])
    dropped_blobs = layout_image_blobs(before, tags["drop"])
    assert len(kept_blobs & dropped_blobs) == 1
    assert layout_blob_files(before) == kept_blobs | dropped_blobs

    spec.write_text(json.dumps({"sync": [{**rule, "tags": {"allow": ["^keep$"]}}]}))
    report = tmp_path / "report.json"
    _sync(spec, env, "--prune", "--report", str(report))
    statuses = {entry["target"]: entry["status"] for entry in json.loads(report.read_text())}
    assert statuses == {
        f"{target}?tag=keep": "unchanged",
        f"{target}?tag=drop": "pruned",
    }, statuses
    after = tmp_path / "after"
    download(after)
    assert layout_index_tags(after) == {"keep": tags["keep"]}
    assert layout_blob_files(after) == kept_blobs
    assert skopeo_copy_out_of_layout(after, "keep", tmp_path / "out") == tags["keep"]


def test_sync_prune_in_an_s3_layout(moto, s3_env, bucket, registry_plain, unique_repo, tmp_path):
    _prune_a_bucket_layout(
        registry_plain,
        unique_repo,
        f"s3://{bucket}/pruned",
        s3_env,
        lambda directory: _download_prefix(moto, bucket, "pruned", directory),
        tmp_path,
    )


def test_an_interrupted_prune_in_an_s3_layout_is_finished_by_the_next(
    moto, s3_env, bucket, registry_plain, unique_repo, tmp_path
):
    """moto refuses (through a fault proxy) every DELETE of drop's own layer: drop's entry
    is gone, the journal object stays; the next sync --prune, after a tag reaching that layer
    was synced, finishes it. The bucket is read with boto3."""
    from tests.integration.fault_proxy import FaultProxy

    _seed_sharing(registry_plain, unique_repo, tmp_path)
    target = f"s3://{bucket}/journal"
    spec = tmp_path / "sync.yaml"
    rule = {"source": f"registry://{registry_plain.host}/{unique_repo}", "target": target}
    spec.write_text(json.dumps({"sync": [rule]}))
    _sync(spec, s3_env)
    synced = tmp_path / "synced"
    _download_prefix(moto, bucket, "journal", synced)
    tags = layout_index_tags(synced)
    layers = json.loads(layout_blob(synced, tags["drop"]))["layers"]
    (own,) = {layer["digest"] for layer in layers} - layout_image_blobs(synced, tags["keep"])

    spec.write_text(json.dumps({"sync": [{**rule, "tags": {"allow": ["^(keep|new)$"]}}]}))
    report = tmp_path / "report.json"
    with FaultProxy(moto.url) as proxy:
        own_key = rf"/{bucket}/journal/blobs/sha256/{own.partition(':')[2]}"
        proxy.fail_next(1000, status=403, path=own_key, method="DELETE")
        env = {**s3_env, "AWS_ENDPOINT_URL": proxy.url}
        _sync(spec, env, "--prune", "--report", str(report), check=False)
    statuses = {entry["target"]: entry["status"] for entry in json.loads(report.read_text())}
    assert statuses[f"{target}?tag=drop"] == "failed", statuses
    cut_short = tmp_path / "cut-short"
    _download_prefix(moto, bucket, "journal", cut_short)
    assert layout_index_tags(cut_short) == {"keep": tags["keep"]}
    (candidates,) = json.loads((cut_short / "occystrap-prune.json").read_text()).values()
    assert own in candidates and set(candidates) <= layout_blob_files(cut_short)

    new = tmp_path / "seed-new"
    build_oci_layout(new, [random_layer(2000, seed=82), random_layer(1000, seed=83)])
    push_with_skopeo(new, registry_plain, unique_repo, "new", manifest_format="oci")
    _sync(spec, s3_env, "--prune", "--report", str(report))
    finished = tmp_path / "finished"
    _download_prefix(moto, bucket, "journal", finished)
    deleted = layout_blob_files(cut_short) - layout_blob_files(finished)
    results = {entry["target"]: entry for entry in json.loads(report.read_text())}
    finished_line = f"finished an interrupted prune: {len(deleted)} blobs deleted"
    assert (results[target]["status"], results[target]["error"]) == ("pruned", finished_line)
    assert not (finished / "occystrap-prune.json").exists()
    assert layout_blob_files(finished) == layout_reachable_blobs(finished)
    assert own in layout_image_blobs(finished, layout_index_tags(finished)["new"])
    assert tags["drop"] not in layout_blob_files(finished)
    assert (
        skopeo_copy_out_of_layout(finished, "new", tmp_path / "out")
        == skopeo_inspect(registry_plain, f"{unique_repo}:new")["Digest"]
    )


def test_sync_prune_in_a_gcs_layout(
    gcs, google_account, google_oauth, cloud_plugins, registry_plain, unique_repo, tmp_path
):
    bucket = "occystrap-gcs-prune"
    gcs.create_bucket(bucket)
    key_file = google_account.key_file(tmp_path / "key.json", f"{google_oauth.url}/token")
    env = {
        "PYTHONPATH": f"{cloud_plugins}{os.pathsep}{REPO_ROOT}",
        "STORAGE_EMULATOR_HOST": gcs.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }

    def download(directory: Path) -> None:
        for name, data in gcs.objects(bucket, "pruned/").items():
            path = directory / name[len("pruned/") :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    _prune_a_bucket_layout(
        registry_plain, unique_repo, f"gs://{bucket}/pruned", env, download, tmp_path
    )


def skopeo_inspect_layout(layout: Path, tag: str) -> str:
    """The digest skopeo reads for TAG in the OCI layout at `layout`."""
    return json.loads(run_skopeo("inspect", f"oci:{layout}:{tag}").stdout)["Digest"]
