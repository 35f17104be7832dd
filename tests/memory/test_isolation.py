"""Memory knows no chat module and no model SDK: importing it loads none of them.

Checked in a fresh interpreter, since this test process has long since imported chat.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parents[2]

MEMORY_MODULES = (
    "parley.memory",
    "parley.memory.full",
    "parley.memory.window",
    "parley.memory.token_window",
    "parley.memory.summary_buffer",
    "parley.memory.vector_recall",
    "parley.memory.hybrid",
    "parley.memory.testing",  # what a plug-in's tests import
)
FORBIDDEN = ("anthropic", "llama_cpp", "parley.chat", "parley.wiring")

PROGRAM = f"""
import importlib, json, sys
for name in {MEMORY_MODULES!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return names


def test_memory_and_its_strategies_load_no_chat_module_and_no_sdk() -> None:
    names = loaded_modules()
    assert set(MEMORY_MODULES) <= set(names)  # the program did import what it names
    leaked = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))
    assert leaked == []
