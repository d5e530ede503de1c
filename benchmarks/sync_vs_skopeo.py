"""Time `occystrap sync` against `skopeo sync` on loopback registries, from one skopeo YAML.

A script, not a test. Three measurements (median of N runs, wall and CPU of the process tree):

- warm: 200 tags (20 repositories x 10 tags) already at the destination; nothing to copy;
- cold: 20 images of 3 layers sharing a base layer, into an empty destination registry each
  run; also how many blobs each tool uploaded (the shared base should go up once);
- the same cold sync with `--cluster local:2` against the embedded default.

    python3 benchmarks/sync_vs_skopeo.py [--runs 3] [--base-mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.integration.images import build_oci_layout, push_with_skopeo  # noqa: E402
from tests.integration.servers import SKOPEO_BINARY, RegistryServer, require_binary  # noqa: E402

REPOSITORIES = 20
WARM_TAGS = 10
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stderr


def seed_source(source: RegistryServer, work: Path, base_mb: int) -> None:
    """20 repositories: one 3-layer image each (a shared base, two layers of its own), then
    10 tags per repository naming it (the warm set); `cold` is the tag the cold runs copy."""
    rng = random.Random(5)
    base = {"base.bin": rng.randbytes(base_mb * 1024 * 1024)}
    for number in range(REPOSITORIES):
        layout = work / f"layout-{number}"
        own = [{f"own-{number}-{i}.bin": rng.randbytes(64 * 1024)} for i in range(2)]
        build_oci_layout(layout, [base, *own])
        push_with_skopeo(layout, source, f"bench/app{number}", "cold")
    with httpx.Client(base_url=source.url) as http:
        for number in range(REPOSITORIES):
            path = f"/v2/bench/app{number}/manifests"
            manifest = http.get(f"{path}/cold", headers={"Accept": MANIFEST_V2}).content
            for tag in range(WARM_TAGS):
                headers = {"Content-Type": MANIFEST_V2}
                http.put(f"{path}/v{tag}", content=manifest, headers=headers).raise_for_status()


def skopeo_yaml(path: Path, source: RegistryServer, tags: list[str]) -> Path:
    images = {f"bench/app{number}": tags for number in range(REPOSITORIES)}
    path.write_text(json.dumps({source.host: {"tls-verify": False, "images": images}}))
    return path


def occystrap_sync(spec: Path, dest: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "occystrap", "--insecure", "--no-cache", "sync", str(spec),
        "--dest", f"registry://{dest}", *extra,
    ]  # fmt: skip


def skopeo_sync(spec: Path, dest: str) -> list[str]:
    return [
        require_binary(SKOPEO_BINARY), "sync", "--src", "yaml", "--dest", "docker",
        "--dest-tls-verify=false", str(spec), dest,
    ]  # fmt: skip


def blob_uploads(stderr: str) -> str:
    for line in stderr.splitlines():
        if "blobs " in line:
            return line.partition("blobs ")[2].partition(";")[0]
    return "?"


def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base-mb", type=int, default=8)
    args = parser.parse_args()
    rows: list[tuple[str, str, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as scratch:
        work = Path(scratch)
        with RegistryServer(work / "source") as source:
            seed_source(source, work, args.base_mb)
            warm_spec = skopeo_yaml(work / "warm.yaml", source, [f"v{t}" for t in range(10)])
            cold_spec = skopeo_yaml(work / "cold.yaml", source, ["cold"])
            with RegistryServer(work / "warm-dest") as dest:
                timed(occystrap_sync(warm_spec, f"{dest.host}/o"))
                timed(skopeo_sync(warm_spec, f"{dest.host}/s"))
                ours, theirs = [], []
                for _ in range(args.runs):
                    ours.append(timed(occystrap_sync(warm_spec, f"{dest.host}/o"))[:2])
                    theirs.append(timed(skopeo_sync(warm_spec, f"{dest.host}/s"))[:2])
                rows.append(("warm, 200 tags", "occystrap", *median(ours), "0 uploaded"))
                rows.append(("warm, 200 tags", "skopeo sync", *median(theirs), ""))
            cold: dict[str, list[tuple[float, float]]] = {"o": [], "s": [], "c": []}
            uploads = {}
            for run in range(args.runs):
                for tool in ("o", "s", "c"):
                    with RegistryServer(work / f"cold-{tool}-{run}") as dest:
                        if tool == "s":
                            wall, cpu, _ = timed(skopeo_sync(cold_spec, f"{dest.host}/m"))
                        else:
                            extra = ("--cluster", "local:2") if tool == "c" else ()
                            wall, cpu, err = timed(
                                occystrap_sync(cold_spec, f"{dest.host}/m", *extra)
                            )
                            uploads[tool] = blob_uploads(err)
                        cold[tool].append((wall, cpu))
            rows.append(("cold, 20 images", "occystrap", *median(cold["o"]), uploads["o"]))
            rows.append(("cold, 20 images", "skopeo sync", *median(cold["s"]), ""))
            rows.append(("cold, 20 images", "occystrap local:2", *median(cold["c"]), uploads["c"]))
    print(f"{'what':<17} {'tool':<18} {'wall s':>7} {'CPU s':>7}  blobs")
    for what, tool, wall, cpu, blobs in rows:
        print(f"{what:<17} {tool:<18} {wall:7.2f} {cpu:7.2f}  {blobs}")


if __name__ == "__main__":
    main()
