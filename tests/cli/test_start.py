"""`parley` starts at once: building the parser, and running a command that calls no
model, import none of the heavy parts (the model SDKs, the embeddings, Chroma, torch,
Streamlit, the benchmarks). Each check runs in a fresh interpreter: this one has loaded
half of them already. The figures are `python -m parley.bench.cli_start`'s job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parley.core.domain import Principal
from parley.store.db import Database

PARLEY = str(Path(sys.executable).with_name("parley"))

HEAVY = (
    "anthropic",
    "llama_cpp",
    "chromadb",
    "torch",
    "sentence_transformers",
    "onnxruntime",
    "tokenizers",
    "streamlit",
    "parley.bench",
)
# Made only when a command (or the app) holds a conversation.
CONVERSATION = (
    "numpy",
    "tiktoken",
    "parley.memory",
    "parley.retrieval",
    "parley.chat.conversation",
    "parley.chat.documents",
)


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds once `code` has run."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(loaded)


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


def test_building_the_parser_imports_nothing_heavy() -> None:
    loaded = modules_after("import parley.cli.main")
    assert among(loaded, HEAVY) == []


def test_building_the_parser_imports_no_settings_database_or_services() -> None:
    # What keeps `parley --help` (and a mistyped command) instant: each command imports
    # the settings, SQLAlchemy and the wiring when it runs.
    loaded = modules_after("import parley.cli.main")
    assert among(loaded, ("parley.wiring", "parley.store", "sqlalchemy", "pydantic")) == []


@pytest.mark.parametrize(
    "env",
    [{}, {"ANTHROPIC_API_KEY": "sk-ant-test-never-sent"}],
    ids=["local model", "Claude configured"],
)
def test_user_list_imports_nothing_heavy(
    alice: Principal, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    # The default memory strategy (hybrid) recalls with embeddings from Chroma: it is
    # still built only when a conversation needs it. (A database holding documents is
    # another matter: the start-up sweep opens Chroma to look for vectors kept the old way.)
    monkeypatch.delenv("PARLEY_MEMORY_STRATEGY")
    code = (
        "import contextlib, io\n"
        "from parley.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['user', 'list'])\n"
        f"assert code == 0 and {alice.name!r} in out.getvalue(), out.getvalue()"
    )
    loaded = modules_after(code, env)
    assert "parley.wiring.services" in loaded  # the command did build the services
    assert among(loaded, HEAVY) == []
    # Nor what only a conversation needs: its services are made when first used.
    assert "parley.auth.accounts" in loaded
    assert among(loaded, CONVERSATION) == []


def test_a_missing_key_still_stops_a_command_before_it_runs(database: Database) -> None:
    del database  # migrated by its fixture
    # The provider is made on its first call, but its key is checked when the services start.
    done = subprocess.run(
        [PARLEY, "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PARLEY_PROVIDER": "anthropic"},
        check=False,
    )
    assert done.returncode == 1
    assert "ANTHROPIC_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_a_malformed_setting_stops_a_command_that_does_not_use_it(database: Database) -> None:
    del database  # migrated by its fixture
    # `user list` opens no vector store, and still refuses a Chroma URL of the wrong shape.
    done = subprocess.run(
        [PARLEY, "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PARLEY_CHROMA_URL": "ftp://chroma.internal:8000"},
        check=False,
    )
    assert done.returncode == 1
    assert "chroma_url" in done.stderr and "Traceback" not in done.stderr


def test_help_answers_quickly() -> None:
    # Generous: about 0.1 s on a quiet machine, and 3 s when it imported every service.
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([PARLEY, "--help"], capture_output=True, text=True, timeout=60)
        best = min(best, time.perf_counter() - started)
        assert done.returncode == 0 and "user" in done.stdout
    assert best < 1.5


def test_the_parley_process_starts_with_the_collector_held_off(alice: Principal) -> None:
    # `run` (the console script) holds the cyclic collector off while the command imports
    # and wires, then freezes what that made and turns the collector on again.
    code = (
        "import contextlib, gc, io, sys\n"
        "from parley.cli.main import run\n"
        "sys.argv = ['parley', 'user', 'list']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert run() == 0\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    enabled, frozen = done.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 50_000  # SQLAlchemy's and pydantic's objects, left out of collections
    del alice


def test_a_program_calling_main_keeps_its_collector(alice: Principal) -> None:
    code = (
        "import contextlib, gc, io\n"
        "from parley.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['user', 'list']) == 0\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "0"]
    del alice


def test_user_list_answers_quickly(alice: Principal) -> None:
    # Generous: about 0.4 s on a quiet machine, and 3.3 s when it imported every service.
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(
            [PARLEY, "user", "list"], capture_output=True, text=True, timeout=60, check=False
        )
        best = min(best, time.perf_counter() - started)
        assert done.returncode == 0 and alice.name in done.stdout, done.stderr
    assert best < 1.5
