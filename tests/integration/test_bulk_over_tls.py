"""Parallel blob transfers over TLS with HTTP/2 on: the bulk pool keeps them from stalling.

Before blob bodies moved to their own HTTP/1.1 pool, two uploads sharing one HTTP/2
connection stalled on flow control until the read timeout (minutes per layer).
"""

from __future__ import annotations

import pytest

from tests.integration.cli import registry_flags, run_occystrap
from tests.integration.images import build_oci_layout, push_with_skopeo, random_layer

pytestmark = pytest.mark.integration

STALL_LIMIT_SECONDS = 60


def test_parallel_uploads_over_http2_registry_finish(registry_tls, unique_repo, tmp_path):
    layout = tmp_path / "layout"
    build_oci_layout(layout, [random_layer(3_000_000, seed) for seed in range(3)])
    push_with_skopeo(layout, registry_tls, unique_repo, "src")
    archive = tmp_path / "image.tar"
    flags = [*registry_flags(registry_tls), "--http2", "--parallel", "3"]
    source = f"registry://{registry_tls.host}/{unique_repo}:src"
    run_occystrap(*flags, "process", source, f"tar://{archive}", timeout=STALL_LIMIT_SECONDS)
    destination = f"registry://{registry_tls.host}/{unique_repo}-pushed:t"
    run_occystrap(*flags, "process", f"tar://{archive}", destination, timeout=STALL_LIMIT_SECONDS)
