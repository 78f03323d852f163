"""The app uses its dependencies' public APIs only: no import of a private module."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_no_module_of_the_app_imports_a_private_module_of_a_dependency():
    private = sorted(
        f"{path.relative_to(APP.parent)}: {module}"
        for path in APP.rglob("*.py")
        for module in _imported_modules(path)
        if not module.startswith("app.") and module != "__future__"
        and any(part.startswith("_") for part in module.split(".")[1:])
    )
    assert private == []


def test_the_check_sees_a_private_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from redis._parsers import encoders\n")
    assert "redis._parsers" in _imported_modules(sample)
