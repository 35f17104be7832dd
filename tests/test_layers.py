"""The import-linter contracts keep up with the code: the model SDKs are forbidden to the
whole of Parley, and the only exceptions are the provider modules that wrap them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_the_model_sdks_are_forbidden_everywhere_but_in_the_providers() -> None:
    (sdk,) = [c for c in _contracts() if c.get("forbidden_modules") == ["anthropic", "llama_cpp"]]
    assert sdk["source_modules"] == ["parley"]
    ignored = sdk["ignore_imports"]
    assert isinstance(ignored, list) and ignored
    for line in ignored:
        importer = line.split(" -> ")[0]
        allowed = importer.startswith("parley.chat.gateway.providers.") or importer == (
            "parley.bench.ttft"  # its baseline is the SDK alone
        )
        assert allowed, line
        assert (ROOT / (importer.replace(".", "/") + ".py")).is_file(), line


def test_every_chat_package_is_in_a_layer_of_chat() -> None:
    (chat,) = [c for c in _contracts() if c.get("containers") == ["parley.chat"]]
    layers = chat["layers"]
    assert isinstance(layers, list)
    named = {name.strip() for layer in layers for name in str(layer).split("|")}
    packages = {p.parent.name for p in (ROOT / "parley" / "chat").glob("*/__init__.py")}
    assert packages == named
    loose = [p.name for p in (ROOT / "parley" / "chat").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"a chat module outside the four packages: {loose}"


PAGE_WORDS = ("admin console", "strategy lab", "sidebar", "click", "button", "this page")


def _literals(package: str) -> list[tuple[str, str]]:
    """Every string a package's code holds (f-strings by their fixed parts), docstrings
    and comments aside: what it may say to someone."""
    import ast

    found = []
    for path in sorted((ROOT / "parley" / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((str(path.relative_to(ROOT)), node.value))
            elif isinstance(node, ast.JoinedStr):
                parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
                found.append((str(path.relative_to(ROOT)), "".join(map(str, parts))))
    return found


def test_no_service_sentence_names_a_page() -> None:
    """Services state facts; pages choose the words that say where to go
    (`parley.app_pages.words`)."""
    named = [
        (path, text)
        for package in ("chat", "auth", "memory", "retrieval", "store", "wiring", "core")
        for path, text in _literals(package)
        if any(word in text.lower() for word in PAGE_WORDS)
    ]
    assert named == []


def test_memory_never_tells_the_user_whom_to_ask() -> None:
    assert [text for _, text in _literals("memory") if "administrator" in text.lower()] == []
