"""The library layer as a caller (or a worker process) uses it: plain arguments in, typed
results out, and nothing built that the run does not need."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from occystrap import credentials, library
from occystrap.errors import OccystrapError, UsageError
from occystrap.middleware import builder
from occystrap.settings import RunSettings
from tests.unit.image_builder import make_image, save_tar


@pytest.fixture
def source_tar(tmp_path: Path) -> Path:
    path = tmp_path / "in.tar"
    save_tar(make_image(tmp_path, [{"etc/hello.txt": b"hello\n"}, {"app/a.py": b"x"}]), path)
    return path


def test_a_copy_between_files_builds_no_client_and_reads_no_credentials(
    source_tar, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("a tar:// -> tar:// copy asked for a client or credentials")

    monkeypatch.setattr(builder, "build_client", refuse)
    monkeypatch.setattr(credentials.CredentialStore, "load", refuse)
    out = tmp_path / "out.tar"
    result = library.copy(f"tar://{source_tar}", f"tar://{out}", RunSettings(use_cache=False))
    assert out.is_file() and result.layers == 2
    assert result.stats.retries == 0


def test_the_guard_really_sees_a_client_being_built(tmp_path, monkeypatch):
    built = []
    real = builder.build_client
    monkeypatch.setattr(builder, "build_client", lambda chain: built.append(chain) or real(chain))
    # Nothing listens there; the point is that the client was built.
    with pytest.raises((httpx.HTTPError, OccystrapError)):
        library.inspect("registry://127.0.0.1:9/none/such:1", RunSettings(retries=0, insecure=True))
    assert len(built) == 1


def test_settings_and_results_cross_process_boundaries(source_tar, tmp_path):
    settings = RunSettings(use_cache=False, authfile=tmp_path / "auth.json", parallel=2)
    assert pickle.loads(pickle.dumps(settings)) == settings
    out = tmp_path / "out.tar"
    result = library.copy(f"tar://{source_tar}", f"tar://{out}", settings)
    copied = pickle.loads(pickle.dumps(result))
    assert (copied.layers, copied.digest) == (result.layers, result.digest)


def test_search_and_inspect_return_what_the_cli_prints(source_tar):
    settings = RunSettings(use_cache=False)
    seen = []
    found = library.search(f"tar://{source_tar}", "**/*.py", settings, on_layer=seen.append)
    assert found.count == 1 and found.layers == 2
    assert [hit.path for layer in found.found for hit in layer.hits] == ["app/a.py"]
    assert seen == list(found.found)
    assert found.found[0].lines(script_friendly=False)[-1] == "  /app/a.py"
    (info,) = library.inspect(f"tar://{source_tar}", settings)
    assert info.image == f"tar://{source_tar}"
    assert len(info.layers) == 2
    assert info.as_json()["layers"][0]["digest"] == info.layers[0].digest


def test_copy_refuses_a_many_image_source_naming_copy_many(tmp_path):
    with pytest.raises(UsageError, match="copy_many"):
        library.copy("quay://kolla/nova-*:2024.1", f"tar://{tmp_path / 'x.tar'}")


def test_copy_many_refuses_a_single_image_destination_before_any_request(tmp_path):
    with pytest.raises(UsageError, match="unique_names=true"):
        library.copy_many("quay://kolla/nova-*:2024.1", f"tar://{tmp_path / 'x.tar'}")


def test_importing_main_runs_nothing():
    completed = subprocess.run(
        [sys.executable, "-c", "import occystrap.__main__"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 0 and completed.stdout == "" and completed.stderr == ""
