"""Time pruning an s3:// layout (moto's server, on loopback) holding N images.

A script, not a test. Each image is one manifest, config and layer of its own plus a layer
all share; ten tags are pruned, so every manifest left is read once (what stays is walked)
and the blobs only those ten used are deleted. `--delay-ms` adds that long to every request
in a loopback proxy in front of moto, standing for a cloud's round trip. `--code` measures
another checkout (before/after).

    python3 benchmarks/layout_prune.py [--images 200] [--delay-ms 20] [--code PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PRUNED = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="checkout to measure")
    args = parser.parse_args()
    sys.path[:0] = [str(args.code), str(REPO_ROOT)]
    from tests.integration.clouds import MotoServer, install_cloud_plugins
    from tests.integration.fault_proxy import ForwardingServer

    delay = args.delay_ms / 1000

    class SlowProxy(ForwardingServer):
        def handle(self, handler) -> None:
            time.sleep(delay)
            super().handle(handler)

    work = Path(tempfile.mkdtemp(prefix="layout-prune-"))
    sys.path.insert(0, str(install_cloud_plugins(work / "plugins")))
    with MotoServer(work) as moto:
        os.environ.update(moto.env())
        _fill(moto.client("s3"), args.images)
        from occystrap.endpoints import parse_uri
        from occystrap.layoutprune import prune_layout
        from occystrap.middleware.builder import build_client
        from occystrap.pipeline import RunContext
        from occystrap.settings import RunSettings

        with SlowProxy(moto.url) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            settings = RunSettings()
            with build_client(settings.chain_settings()) as http:
                ctx = RunContext(settings, http, work)
                storage = parse_uri("s3://bench/layout").layout(ctx)
                doomed = {f"t{i}" for i in range(PRUNED)}
                started, cpu = time.monotonic(), time.process_time()
                outcome = prune_layout(storage, lambda tags: doomed & set(tags), ctx.cancellation)
                wall, cpu = time.monotonic() - started, time.process_time() - cpu
            print(
                f"{args.images} images, {args.delay_ms:.0f} ms added: {wall:.2f} s wall,"
                f" {cpu:.2f} CPU s; {len(outcome.removed)} tags removed,"
                f" {len(outcome.deleted)} blobs deleted, {len(proxy.requests)} requests;"
                f" load {os.getloadavg()[0]:.2f}"
            )


def _fill(s3, images: int) -> None:
    """A layout of `images` tagged images under s3://bench/layout, written with boto3."""
    s3.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

    def put(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        s3.put_object(Bucket="bench", Key=f"layout/blobs/sha256/{digest}", Body=data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = "application/vnd.oci.image.layer.v1.tar"
    shared = put(b"the shared layer", layer)
    entries = []
    for number in range(images):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": put(
                json.dumps({"image": number}).encode(), "application/vnd.oci.image.config.v1+json"
            ),
            "layers": [shared, put(f"layer {number}".encode(), layer)],
        }
        descriptor = put(json.dumps(manifest).encode(), OCI_MANIFEST)
        entries.append(
            {**descriptor, "annotations": {"org.opencontainers.image.ref.name": f"t{number}"}}
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }
    s3.put_object(Bucket="bench", Key="layout/oci-layout", Body=b'{"imageLayoutVersion":"1.0.0"}')
    s3.put_object(Bucket="bench", Key="layout/index.json", Body=json.dumps(index).encode())


if __name__ == "__main__":
    main()
