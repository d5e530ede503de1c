"""The public API as a library user meets it: typed exports, and the examples of
docs/library.md type-checked by mypy against this tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from mypy import api as mypy_api

import occystrap

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_DOC = ROOT / "docs" / "library.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", LIBRARY_DOC.read_text(), re.DOTALL)


def test_the_docs_have_examples():
    assert len(_examples()) >= 3


def test_library_examples_type_check(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # mypy finds `occystrap` in the working directory first
    paths = []
    for number, example in enumerate(_examples()):
        path = tmp_path / f"example_{number}.py"
        path.write_text(example)
        paths.append(str(path))
    out, err, status = mypy_api.run(
        ["--no-incremental", "--cache-dir", str(tmp_path / "cache"), "--strict-optional", *paths]
    )
    assert status == 0, out + err


def _type_checking_names() -> set[str]:
    """The names `occystrap/__init__.py` imports for type checkers."""
    tree = ast.parse((ROOT / "occystrap" / "__init__.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom)
                names |= {alias.name for alias in statement.names}
    return names


def test_every_export_is_typed_and_loads():
    exported = set(occystrap.__all__)
    assert exported == set(occystrap._EXPORTS) == _type_checking_names()
    for name in sorted(exported):
        assert getattr(occystrap, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = occystrap.nothing  # type: ignore[attr-defined]
