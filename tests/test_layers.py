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
