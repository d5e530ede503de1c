"""Which package may import which (docs/architecture.md, "Layout of the code"), checked on
the source itself: every import statement, those inside functions and under TYPE_CHECKING
included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "occystrap"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# The layers, top to bottom; a module may import its own layer and those below, never above.
ENTRY = {"cli", "__main__"}
LIBRARY = {"library", "toolbox", "artifacts", "sync", "bulk"}
DATA_MODEL = {
    "image",
    "manifest",
    "platforms",
    "mediatypes",
    "digests",
    "streams",
    "errors",
    "jsondoc",
    "limits",
    "units",
    "redaction",
    "compression",
}
PROTOCOL = {"registry", "middleware"}  # the Registry V2 protocol and the client's chain


def _unit(module: str) -> str | None:
    """`occystrap.endpoints.tar` -> "endpoints": the top-level module or package."""
    parts = module.split(".")
    if parts[0] != "occystrap" or len(parts) < 2:
        return None
    return parts[1]


def _imports() -> dict[str, set[str]]:
    """Each module of the package (by file) and every module it imports, as written."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                if node.module == "occystrap":
                    names |= {f"occystrap.{alias.name}" for alias in node.names}
        found[str(path.relative_to(PACKAGE.parent))] = names
    return found


IMPORTS = _imports()


def _unit_of_file(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return parts[1]


def _offenders(sources: set[str], forbidden: set[str]) -> list[str]:
    return [
        f"{path} imports {name}"
        for path, names in IMPORTS.items()
        if _unit_of_file(path) in sources
        for name in sorted(names)
        if _unit(name) in forbidden
    ]


def test_the_rules_see_the_whole_package():
    assert len(IMPORTS) > 60
    assert "occystrap.library" in IMPORTS["occystrap/cli.py"]


def test_only_the_command_line_imports_click():
    assert [
        path
        for path, names in IMPORTS.items()
        if any(name.split(".")[0] == "click" for name in names)
    ] == ["occystrap/cli.py"]


def test_nothing_imports_the_command_line_but_main():
    assert [path for path, names in IMPORTS.items() if "occystrap.cli" in names] == [
        "occystrap/__main__.py"
    ]


def test_below_the_library_nothing_imports_it():
    everything = {_unit_of_file(path) for path in IMPORTS}
    below = everything - LIBRARY - ENTRY - {"__init__"}
    assert _offenders(below, LIBRARY | ENTRY) == []


def test_the_data_model_imports_only_the_data_model():
    everything = {_unit_of_file(path) for path in IMPORTS}
    assert _offenders(DATA_MODEL, everything - DATA_MODEL) == []


def test_the_protocol_and_the_chain_know_no_endpoint_pipeline_or_daemon():
    assert _offenders(PROTOCOL, {"endpoints", "filters", "pipeline", "daemon", "quay"}) == []


def test_the_daemon_client_is_outside_the_registry_protocol():
    assert _offenders({"daemon"}, {"registry", "endpoints", "pipeline"}) == []


def test_archive_formats_share_readers_not_each_other():
    assert [
        path
        for path, names in IMPORTS.items()
        if path == "occystrap/ocilayout.py" and "occystrap.dockersave" in names
    ] == []


def _table() -> str:
    return ARCHITECTURE.read_text().partition("## Layout of the code")[2].partition("###")[0]


@pytest.mark.parametrize("path", sorted(IMPORTS))
def test_the_layout_table_names_every_module(path):
    """A top-level module by its file name, a package's module in its package's row."""
    parts = Path(path).parts[1:]
    if parts[-1] in ("__init__.py", "__main__.py"):
        return
    rows = [line for line in _table().splitlines() if line.startswith("| `")]
    if len(parts) == 1:
        assert any(f"`{parts[0]}`" in row.split("|")[1] for row in rows), path
    else:
        (row,) = [row for row in rows if row.split("|")[1].strip() == f"`{parts[0]}/`"]
        assert f"`{parts[-1]}`" in row, path


def test_the_layout_table_names_nothing_that_is_not_there():
    for row in _table().splitlines():
        if row.startswith("| `"):
            for name in row.split("|")[1].replace("`", "").split(","):
                assert (PACKAGE / name.strip()).exists(), name
