"""`parley.memory` is a plug-in's whole API: whatever the built-ins use is exported there."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import parley.memory
from parley.memory import available

ROOT_DIR = Path(__file__).resolve().parents[2]
BUILT_IN_MODULES = ("full", "window", "token_window", "summary_buffer", "vector_recall", "hybrid")


def parley_imports(module: str) -> set[tuple[str, str]]:
    tree = ast.parse((ROOT_DIR / "parley" / "memory" / f"{module}.py").read_text())
    return {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parley")
        for alias in node.names
    }


def test_every_helper_a_built_in_uses_is_public() -> None:
    strategies = {factory.__name__ for factory in available().values()}  # type: ignore[attr-defined]
    missing = sorted(
        f"{module}: {name} (from {source})"
        for module in BUILT_IN_MODULES
        for source, name in parley_imports(module)
        # Another built-in strategy, or its tuning constant, is not a helper.
        if name not in parley.memory.__all__ and name not in strategies and not name.isupper()
    )
    assert missing == []


def test_every_public_name_is_there() -> None:
    for name in parley.memory.__all__:
        assert getattr(parley.memory, name) is not None, name
    assert sorted(parley.memory.__all__) == sorted(set(parley.memory.__all__))


def test_the_type_marker_and_the_plug_in_template_ship_with_the_package() -> None:
    config = tomllib.loads((ROOT_DIR / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["parley"] and (ROOT_DIR / "parley" / "py.typed").is_file()
    templates = sorted((ROOT_DIR / "parley" / "memory" / "template").glob("*.tmpl"))
    assert templates and "template/*.tmpl" in data["parley.memory"]
