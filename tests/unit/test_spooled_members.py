"""Reading a docker-save tarball from a non-seekable stream (a daemon's export), spooled as
it passes, gives the same image as reading the tarball in place: both layouts."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from occystrap.archive import SpooledTarMembers, TarMembers
from occystrap.dockersave import DockerSaveReader
from occystrap.errors import OccystrapError
from occystrap.image import FileBlob, Image

from .image_builder import make_image, read_verified, save_tar
from .test_tar_input import LAYERS, oci_archive


class OneWayStream:
    """Only `read`: no seek, no tell, and reads shorter than asked, as a socket gives them."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.position = data, step, 0

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk


def classic_archive(tmp_path: Path) -> Path:
    image = make_image(tmp_path, [*LAYERS, LAYERS[0]])
    save_tar(image, tmp_path / "classic.tar")
    return tmp_path / "classic.tar"


def spooled(path: Path, directory: Path, step: int = 4096, limit: int = 1024) -> Image:
    stream = OneWayStream(path.read_bytes(), step)
    members = SpooledTarMembers(stream, directory, "the export", small_limit=limit)
    return read_verified(DockerSaveReader(members).read())


def facts(image: Image) -> tuple:
    """Everything an output uses, bytes of every layer included."""
    layers = []
    for layer in image.layers:
        with layer.open_tar() as stream:
            tar = stream.read()
        layers.append((layer.digest, layer.size, layer.media_type, layer.diff_id, tar))
    return image.source, image.config, image.manifest, image.manifest_media_type, layers


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_a_stream_reads_as_the_tarball_does(tmp_path, layout):
    path = classic_archive(tmp_path) if layout == "classic" else oci_archive(tmp_path)[0]
    in_place = read_verified(DockerSaveReader(TarMembers(path)).read())
    assert facts(spooled(path, tmp_path / "spool")) == facts(in_place)


def test_layers_are_spooled_to_files_as_they_pass_and_small_members_kept(tmp_path):
    path = classic_archive(tmp_path)
    spool = tmp_path / "spool"
    members = SpooledTarMembers(OneWayStream(path.read_bytes(), 4096), spool, "x", 1024)
    image = DockerSaveReader(members).read()
    distinct_layers = {layer.diff_id: layer.size for layer in image.layers}
    assert len(distinct_layers) == 2 and min(distinct_layers.values()) > 1024
    assert sorted(p.stat().st_size for p in spool.iterdir()) == sorted(distinct_layers.values())
    for layer in read_verified(image).layers:
        assert isinstance(layer.blob, FileBlob) and layer.blob.path.parent == spool


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(step=st.integers(min_value=1, max_value=20000))
def test_any_read_pattern_gives_the_same_image(tmp_path_factory, step):
    work = tmp_path_factory.mktemp("spool")
    path = oci_archive(work)[0]
    expected = facts(read_verified(DockerSaveReader(TarMembers(path)).read()))
    assert facts(spooled(path, work / "spool", step=step)) == expected


@pytest.mark.parametrize("member", ["manifest.json", "the largest layer"])
def test_a_stream_cut_inside_a_member_is_a_one_line_error(tmp_path, member):
    path = classic_archive(tmp_path)
    with tarfile.open(path) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
    if member == "manifest.json":
        (cut_in,) = [m for m in members if m.name == "manifest.json"]
    else:
        cut_in = max(members, key=lambda m: m.size)
    data = path.read_bytes()[: cut_in.offset_data + cut_in.size // 2]
    with pytest.raises(OccystrapError, match="the export: not a complete tar stream") as err:
        SpooledTarMembers(OneWayStream(data, 4096), tmp_path / "spool", "the export")
    assert "\n" not in str(err.value)
