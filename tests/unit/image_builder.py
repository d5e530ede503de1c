"""Build small test images (layers on disk, config, Image) for the file input/output tests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from occystrap import compression
from occystrap.pipeline import Image, Layer


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def layer_tar(files: dict[str, bytes | str]) -> bytes:
    """An uncompressed layer tar: bytes values are files, str values are symlink targets."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def make_image(
    workdir: Path,
    layer_files: list[dict[str, bytes | str]],
    kind: str = compression.GZIP,
    name: str = "library/busybox",
    tag: str | None = "latest",
    known_sizes: bool = True,
) -> Image:
    """An Image whose layers are stored compressed as `kind` under `workdir`."""
    layers = []
    for files in layer_files:
        raw = layer_tar(files)
        path = workdir / f"blob-{len(layers)}-{sha256(raw)[7:19]}"
        with open(path, "wb") as handle:
            digest, size = compression.compress_stream(io.BytesIO(raw), handle, kind)
        layers.append(
            Layer(
                digest=digest,
                size=size,
                media_type=compression.media_type_for(kind, kind == compression.ZSTD),
                diff_id=sha256(raw),
                path=path,
                uncompressed_size=len(raw) if known_sizes else None,
            )
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": "test"} for _ in layers],
        }
    ).encode()
    return Image(
        name=name,
        tag=tag,
        config=config,
        config_digest=sha256(config),
        layers=layers,
        manifest_media_type="application/vnd.docker.distribution.manifest.v2+json",
    )
