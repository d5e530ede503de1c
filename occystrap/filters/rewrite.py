"""Rewriting layers, for filters that change what is in them (`exclude`, `normalize-timestamps`).

Each layer is streamed member by member from its verified tar into a new uncompressed tar in
the work directory, hashed as it is written, so no layer is ever held in memory. The new layer
is stored uncompressed (its digest is its diff_id); a registry destination compresses it,
deterministically, when it pushes. The tar is written in one fixed format (PAX, UTF-8), in the
source's member order, with nothing taken from the clock or the machine, so the same input and
filters give the same bytes, and so the same digests, on every run.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from occystrap import compression
from occystrap.atomic import discard_tree
from occystrap.errors import OccystrapError
from occystrap.image import FileBlob, Image, Layer
from occystrap.pipeline import RunContext, local_layers

TAR_FORMAT = tarfile.PAX_FORMAT
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"  # names that are not UTF-8 travel byte for byte
_SPARSE_KEYS = "GNU.sparse."

#: What to write for one source member: entries with their data (None for non-files).
Written = Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]


class MemberEditor(Protocol):
    def edit(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> Written:
        """The entries to write for `member` (none drops it); `data` is a file's content."""
        ...


#: Builds the editor of one layer; it may read the layer first (`layer.open_tar()`) and keep
#: scratch files in the given directory, which is removed after the layer is written.
EditorFactory = Callable[[Layer, Path], MemberEditor]


class _HashingWriter:
    """Writes through to a file, hashing and counting what passes."""

    def __init__(self, target: BinaryIO) -> None:
        self.target, self.hasher, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.hasher.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self.hasher.hexdigest()}"


def open_layer_tar(layer: Layer, stream: BinaryIO) -> tarfile.TarFile:
    """Read `stream` (a layer's verified tar) member by member, front to back."""
    try:
        return tarfile.open(fileobj=stream, mode="r|", encoding=TAR_ENCODING, errors=TAR_ERRORS)
    except tarfile.TarError as error:
        raise OccystrapError(f"layer {layer.digest} is not a tar archive: {error}") from None


def members(layer: Layer, reader: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The reader's members, a damaged archive being a one-line error naming the layer."""
    try:
        yield from reader
    except tarfile.TarError as error:
        raise OccystrapError(f"layer {layer.digest}: damaged tar archive: {error}") from None


@contextmanager
def layer_headers(layer: Layer) -> Iterator[Iterator[tarfile.TarInfo]]:
    """The layer's members, for reading headers only: a tar kept on disk (verified when it
    was written) is read seeking from header to header; any other is streamed and verified."""
    if layer.tar_path is None:
        with layer.open_tar() as stream, open_layer_tar(layer, stream) as reader:
            yield members(layer, reader)
        return
    try:  # opened apart from the `with` below, so only opening errors are caught here
        kept = tarfile.open(layer.tar_path, "r:", encoding=TAR_ENCODING, errors=TAR_ERRORS)  # noqa: SIM115
    except tarfile.TarError as error:
        raise OccystrapError(f"layer {layer.digest} is not a tar archive: {error}") from None
    with kept:
        yield members(layer, kept)


# Header fields a PAX record overrides when present (tarfile writes the record, not the field).
_PAX_RECORD_OF = {
    "name": "path",
    "linkname": "linkpath",
    "size": "size",
    "mtime": "mtime",
    "uid": "uid",
    "gid": "gid",
    "uname": "uname",
    "gname": "gname",
}


def set_fields(member: tarfile.TarInfo, drop: tuple[str, ...] = (), **fields: object) -> None:
    """Change `member`'s header fields, removing the PAX records that would override them
    (and those named in `drop`)."""
    gone = set(drop) | {_PAX_RECORD_OF[name] for name in fields if name in _PAX_RECORD_OF}
    member.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in gone}
    for name, value in fields.items():
        setattr(member, name, value)


def _as_plain_file(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A sparse member becomes a plain file (the reader expands it; PAX writes no holes)."""
    if not member.issparse():
        return member
    sparse_records = tuple(key for key in member.pax_headers if key.startswith(_SPARSE_KEYS))
    set_fields(member, sparse_records, type=tarfile.REGTYPE, sparse=None)
    return member


def rewrite_layer(layer: Layer, editor: MemberEditor, workdir: Path, oci: bool) -> Layer:
    """`layer` rewritten by `editor` into a new uncompressed tar under `workdir`."""
    handle, name = tempfile.mkstemp(dir=workdir, prefix="filtered-", suffix=".tar")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as target:
            out = _HashingWriter(target)
            with (
                layer.open_tar() as stream,
                open_layer_tar(layer, stream) as reader,
                tarfile.open(  # type: ignore[call-overload]
                    fileobj=out,
                    mode="w|",
                    format=TAR_FORMAT,
                    encoding=TAR_ENCODING,
                    errors=TAR_ERRORS,
                ) as writer,
            ):
                for member in members(layer, reader):
                    data = reader.extractfile(member) if member.isreg() else None
                    for entry, content in editor.edit(_as_plain_file(member), data):
                        writer.addfile(entry, content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Layer(
        digest=out.digest,
        size=out.size,
        media_type=compression.media_type_for(compression.NONE, oci),
        diff_id=out.digest,
        blob=FileBlob(path),
        tar_path=path,
        uncompressed_size=out.size,
        created_by=layer.created_by,
    )


def rewrite_layers(image: Image, ctx: RunContext, editor_for: EditorFactory) -> Image:
    """A new image whose every layer went through an editor from `editor_for`.

    Layers arrive through `local_layers` (fetched `-j` ahead, verified); a layer that appears
    twice is rewritten once."""
    rewritten: dict[str, Layer] = {}
    layers = []
    for layer in local_layers(image, ctx):
        if layer.digest not in rewritten:
            scratch = Path(tempfile.mkdtemp(dir=ctx.workdir, prefix="filter-scratch-"))
            try:
                editor = editor_for(layer, scratch)
                rewritten[layer.digest] = rewrite_layer(layer, editor, ctx.workdir, image.is_oci)
            finally:
                discard_tree(scratch)
        layers.append(replace(rewritten[layer.digest], created_by=layer.created_by))
    return image.with_layers(layers)
