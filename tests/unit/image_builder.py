"""Build small test images (layers on disk, config, Image) for the file input/output tests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

import httpx

from occystrap import compression
from occystrap.image import FileBlob, Image, Layer, SourceName
from occystrap.pipeline import RunContext
from occystrap.settings import RunSettings


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# A layer entry: bytes a file (mode 0644), (bytes, mode) a file with that mode, a str a
# symlink to it, None a directory (mode 0755).
Entry = bytes | str | tuple[bytes, int] | None


def layer_tar(files: dict[str, Entry]) -> bytes:
    """An uncompressed layer tar of `files` (see `Entry`), in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if isinstance(content, tuple):
                content, info.mode = content
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def make_image(
    workdir: Path,
    layer_files: list[dict[str, Entry]],
    kind: str = compression.GZIP,
    name: str = "library/busybox",
    tag: str | None = "latest",
    known_sizes: bool = True,
    settings: dict | None = None,
) -> Image:
    """An Image whose layers are stored compressed as `kind` under `workdir`; `settings` is
    the config's `config` section (Env, Cmd, User...)."""
    tars = [layer_tar(files) for files in layer_files]
    return image_of_tars(workdir, tars, kind, name, tag, known_sizes, settings)


def image_of_tars(
    workdir: Path,
    tars: list[bytes],
    kind: str = compression.GZIP,
    name: str = "library/busybox",
    tag: str | None = "latest",
    known_sizes: bool = True,
    settings: dict | None = None,
) -> Image:
    """An Image over the given layer tars, stored compressed as `kind` under `workdir`."""
    layers = []
    for raw in tars:
        path = workdir / f"blob-{len(layers)}-{sha256(raw)[7:19]}"
        with open(path, "wb") as handle:
            digest, size = compression.compress_stream(io.BytesIO(raw), handle, kind)
        layers.append(
            Layer(
                digest=digest,
                size=size,
                media_type=compression.media_type_for(kind, kind == compression.ZSTD),
                diff_id=sha256(raw),
                blob=FileBlob(path),
                uncompressed_size=len(raw) if known_sizes else None,
                created_by=f"test {len(layers)}",
            )
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-05-06T07:08:09Z",
            "config": settings or {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [
                {"created": "2024-05-06T07:08:09Z", "created_by": f"test {position}"}
                for position in range(len(layers))
            ],
        }
    ).encode()
    return Image(SourceName(name, tag), config, tuple(layers))


def context(workdir: Path, **settings: object) -> RunContext:
    """A run context for file endpoints: no network is touched through its client."""
    workdir.mkdir(parents=True, exist_ok=True)
    return RunContext(RunSettings(**settings), httpx.Client(), workdir)  # type: ignore[arg-type]


def save_tar(image: Image, path: Path, progress: object = None) -> None:
    """Write `image` through the tar:// destination, with scratch space outside `path`'s dir."""
    from occystrap.endpoints.tar import TarDestination

    with tempfile.TemporaryDirectory() as work:
        ctx = context(Path(work))
        if progress is not None:
            ctx.progress = progress  # type: ignore[assignment]
        TarDestination(path, ctx).write(image)


def read_verified(image: Image) -> Image:
    """Read every layer to its end, so its digests are checked as an output would check them."""
    for layer in image.layers:
        with layer.open_tar() as stream:
            while stream.read(1 << 20):
                pass
    return image
