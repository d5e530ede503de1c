"""What `occystrap sync` prints: one line per image, a summary, a JSON report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from occystrap.atomic import atomic_file
from occystrap.cancel import Cancellation
from occystrap.errors import OccystrapError
from occystrap.settings import RunSettings
from occystrap.sync.config import load_spec
from occystrap.sync.engine import SyncOptions, sync
from occystrap.sync.plan import COPY, FAILED, KEPT, PRUNE, UNCHANGED, PlannedImage, SyncPlan
from occystrap.sync.run import ImageResult, summarise
from occystrap.units import human_bytes


def image_line(result: ImageResult) -> str:
    return _line(
        result.status, result.source, result.target, result.digest, result.error, result.bytes
    )


def plan_line(image: PlannedImage) -> str:
    return _line(image.action, image.source, image.target, image.digest, image.error)


def _line(
    word: str, source: str | None, target: str, digest: str | None, error: str | None, size: int = 0
) -> str:
    """One image's line: what happens (or happened), from where to where, and the outcome."""
    line = f"{word:<9} "
    line += f"{source} -> {target}" if source else target
    if digest:
        line += f" {digest}"
    if size:
        line += f" ({human_bytes(size)})"
    if error:
        line += f": {error}"
    return line


def print_plan(plan: SyncPlan, output_format: str) -> None:
    if output_format == "json":
        print(json.dumps([image.as_json() for image in plan.images], indent=2))
        return
    for image in plan.images:
        print(plan_line(image))
    counts = {action: plan.count(action) for action in (COPY, UNCHANGED, PRUNE, KEPT, FAILED)}
    print(
        "occystrap: plan: " + ", ".join(f"{n} {action}" for action, n in counts.items()),
        file=sys.stderr,
    )


def run_sync_command(
    settings: RunSettings,
    file: Path,
    *,
    dest: str | None,
    scoped: bool,
    options: SyncOptions,
    report: Path | None,
    cancellation: Cancellation | None = None,
) -> None:
    spec = load_spec(file, dest, scoped)
    dry_run = options.dry_run
    text = settings.output_format != "json"
    started = time.monotonic()

    def on_result(result: ImageResult) -> None:
        if text:
            print(image_line(result))
            sys.stdout.flush()

    outcome = sync(settings, spec, options, on_result, cancellation)
    if dry_run:
        print_plan(outcome.plan, settings.output_format)
        return
    documents = [result.as_json() for result in outcome.results]
    if not text:
        print(json.dumps(documents, indent=2))
    if report is not None:
        with atomic_file(report) as out:
            out.write(json.dumps(documents, indent=2).encode() + b"\n")
    counts = summarise(outcome.results)
    uploaded = sum(result.bytes for result in outcome.results)
    blobs_up = sum(result.uploaded for result in outcome.results)
    blobs_mounted = sum(result.mounted for result in outcome.results)
    print(
        "occystrap: sync: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; blobs {blobs_up} uploaded, {blobs_mounted} mounted; {human_bytes(uploaded)}"
        f" uploaded in {time.monotonic() - started:.1f} s, {outcome.retries}"
        f" {'retry' if outcome.retries == 1 else 'retries'}",
        file=sys.stderr,
    )
    if counts[FAILED]:
        raise OccystrapError(f"{counts[FAILED]} images failed; see the lines above")
