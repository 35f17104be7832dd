"""The import-linter contracts keep up with the code: every chat module but the
providers is named by the contract that keeps model SDKs out of it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_chat_module_but_the_providers_is_kept_from_the_sdks() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (sdk,) = [c for c in contracts if c["name"] == "Only chat.providers imports the model SDKs"]
    modules = {f"chat.{p.stem}" for p in (ROOT / "chat").glob("*.py") if p.stem != "__init__"}
    assert modules <= set(sdk["source_modules"]), modules - set(sdk["source_modules"])
