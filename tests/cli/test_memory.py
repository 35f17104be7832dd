"""`parley memory strategies` and `parley memory new`: plug-ins listed, and started."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from parley.cli.main import main
from parley.memory.testing import check_strategy

BUILT_INS = ["full", "hybrid", "summary_buffer", "token_window", "vector_recall", "window"]
PYTHON = sys.executable
PARLEY = str(Path(sys.executable).with_name("parley"))


def listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["memory", "strategies", "--json"]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_strategies_lists_name_package_version_and_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = listed(capsys)
    assert [row["name"] for row in rows] == BUILT_INS
    assert all(row["package"] == "parley" for row in rows)
    assert all(row["version"] == version("parley") for row in rows)
    window = next(row for row in rows if row["name"] == "window")
    assert window["options"] == [
        {
            "name": "turns",
            "type": "int",
            "default": 6,
            "value": 6,
            "description": "the most recent turns kept",
        }
    ]
    assert next(row for row in rows if row["name"] == "full")["options"] == []
    assert [row["name"] for row in rows if row["default"]] == ["token_window"]  # the tests'
    monkeypatch.setenv("PARLEY_MEMORY__WINDOW__TURNS", "3")
    window = next(row for row in listed(capsys) if row["name"] == "window")
    assert window["options"][0]["value"] == 3  # type: ignore[index]


def test_strategies_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "strategies"]) == 0
    out = capsys.readouterr().out
    assert f"token_window  (default)  ·  parley {version('parley')}\n" in out
    assert "\n    turns = 6" in out


def test_a_bad_option_in_the_environment_is_one_sentence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_MEMORY__WINDOW__TURNS", "many")
    assert main(["memory", "strategies"]) == 1
    assert capsys.readouterr().err == (
        "parley: PARLEY_MEMORY__WINDOW__TURNS is not valid: Input should be a valid integer, "
        "unable to parse string as an integer.\n"
    )


@pytest.fixture
def on_path() -> Iterator[list[str]]:
    """Folders put on sys.path by a test, and the modules it imported from them, undone."""
    added: list[str] = []
    yield added
    for folder in added:
        sys.path.remove(folder)
    for name in [n for n in sys.modules if n.startswith("parley_questions_only")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_new_writes_a_plugin_that_follows_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], on_path: list[str]
) -> None:
    target = tmp_path / "qo"
    assert main(["memory", "new", "questions_only", "--dir", str(target)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Wrote the `questions_only` strategy plug-in in {target}:")
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "parley_questions_only/__init__.py",
        "parley_questions_only/py.typed",
        "parley_questions_only/strategy.py",
        "pyproject.toml",
        "tests/test_strategy.py",
    ]
    pyproject = (target / "pyproject.toml").read_text()
    assert 'name = "parley-questions-only"' in pyproject
    assert (
        '[project.entry-points."parley.memory_strategies"]\n'
        'questions_only = "parley_questions_only.strategy:QuestionsOnly"'
    ) in pyproject
    assert "PARLEY_MEMORY__QUESTIONS_ONLY__MAX_TURNS" in (target / "README.md").read_text()
    for source in target.rglob("*.py"):
        compile(source.read_text(), str(source), "exec")
    on_path.append(str(target))
    sys.path.insert(0, str(target))
    strategy = importlib.import_module("parley_questions_only.strategy")
    check_strategy(strategy.QuestionsOnly)
    check_strategy(strategy.QuestionsOnly, options={"max_turns": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad-Name"], "'Bad-Name' cannot name a strategy"),
        (["a__b"], "'a__b' cannot name a strategy"),  # would split PARLEY_MEMORY__A__B__X
        (["none"], "'none' cannot name a strategy"),  # `class None` does not compile
        (["context_request"], "'context_request' cannot name a strategy: its class"),
        (["window"], "A strategy named 'window' is already installed (from parley)"),
    ],
)
def test_new_refuses_a_bad_or_taken_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["memory", "new", *args, "--dir", str(tmp_path / "p")]) == 1
    assert capsys.readouterr().err.startswith(f"parley: {message}")
    assert not (tmp_path / "p").exists()


def test_new_writes_into_no_folder_that_holds_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    assert main(["memory", "new", "mine", "--dir", str(tmp_path / "p")]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["notes.txt"]


def test_new_writes_into_a_folder_of_its_own_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["memory", "new", "recent_only"]) == 0
    assert (tmp_path / "parley-recent-only" / "parley_recent_only" / "strategy.py").is_file()


# --- built, installed and found ---------------------------------------------------------


def run(*command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(command),
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


CHECK_INSTALLED = """
from importlib.metadata import entry_points
from parley.memory import available
from parley.memory.testing import check_strategy

(entry,) = [e for e in entry_points(group="parley.memory_strategies") if e.name == "questions_only"]
assert entry.dist.name == "parley-questions-only", entry.dist.name
check_strategy(available()["questions_only"])
print("checked", entry.dist.version)
"""


@pytest.mark.slow
def test_the_new_plugin_builds_installs_and_is_found(tmp_path: Path) -> None:
    project, wheels, site = tmp_path / "questions", tmp_path / "wheels", tmp_path / "site"
    assert main(["memory", "new", "questions_only", "--dir", str(project)]) == 0
    run(
        PYTHON,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--wheel-dir",
        str(wheels),
        str(project),
        cwd=tmp_path,
        env={},
    )
    (wheel,) = wheels.glob("parley_questions_only-0.1.0-*.whl")
    run(
        PYTHON,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--quiet",
        "--target",
        str(site),
        str(wheel),
        cwd=tmp_path,
        env={},
    )
    # Another process, with the installed wheel on its path: found through its entry point.
    installed = {"PYTHONPATH": str(site), "PARLEY_DATA_DIR": str(tmp_path / "data")}
    checked = run(PYTHON, "-c", CHECK_INSTALLED, cwd=tmp_path, env=installed)
    assert checked.stdout.strip() == "checked 0.1.0"
    listing = run(PARLEY, "memory", "strategies", "--json", cwd=tmp_path, env=installed)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["questions_only"]["package"] == "parley-questions-only"
    assert rows["questions_only"]["version"] == "0.1.0"
    assert rows["questions_only"]["options"][0]["name"] == "max_turns"
    assert rows["window"]["package"] == "parley"  # the built-ins are still there
    # The generated tests pass against the installed package.
    tests = run(
        PYTHON,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(project / "tests"),
        cwd=project / "tests",
        env=installed,
    )
    assert "3 passed" in tests.stdout
