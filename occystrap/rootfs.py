"""Expanding an image's layers onto disk for a runtime: oci:// bundles, mounts:// layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from occystrap.extract import ExpandPolicy, apply_layer
from occystrap.image import Image
from occystrap.pipeline import RunContext, local_layers


def expand_layers(
    image: Image,
    ctx: RunContext,
    policy: ExpandPolicy,
    target_for: Callable[[int], Path],
    *,
    overlay: bool = False,
) -> None:
    """Apply the image's layers in order, layer `n` onto `target_for(n)`, through the safe
    extraction (`overlay`: in overlayfs form), as `policy` allows.

    The uncompressed tars, then the files expanded from them, may each take the policy's
    budget: a decompression bomb is stopped before it fills the disk. The files' bytes are
    what the run's summary counts as written.
    """
    compressed = sum(layer.size for layer in image.layers)
    files_budget = policy.budget_for(compressed)
    for position, layer in enumerate(local_layers(image, ctx, policy.budget_for(compressed))):
        with layer.open_tar() as tar:
            report = apply_layer(
                tar,
                target_for(position),
                overlay=overlay,
                lower=[target_for(below) for below in reversed(range(position))] if overlay else (),
                devices=policy.devices,
                setuid=policy.setuid,
                budget=files_budget,
                what=f"layer {layer.digest}",
            )
        ctx.stats.add(bytes_uploaded=report.file_bytes)
