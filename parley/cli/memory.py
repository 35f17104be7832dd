"""`parley memory`: the installed memory strategies, and a new strategy plug-in to start from.

    parley memory strategies [--json]     each strategy's name, package, version and options
    parley memory new NAME [--dir DIR]    a plug-in project: pyproject.toml with the entry
                                          point, the strategy, a test using check_strategy,
                                          and a README

Neither opens the database. Building the parser imports nothing but the standard
library; each command imports `parley.memory` (SQLAlchemy, NumPy, tiktoken) when it
runs, so that `parley --help` and every other command start without them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from string import Template
from typing import Any

from parley.core.errors import InvalidInput

# A strategy's name is also an environment variable's part and a Python package's.
# Lower-case words joined by single underscores: `__` would split the environment
# variable `PARLEY_MEMORY__<STRATEGY>__<OPTION>` in the wrong place.
_NAME = re.compile(r"^(?=.{1,40}$)[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
# Template file -> where it goes in the project; {package} is the plug-in's package.
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "{package}/__init__.py",
    "strategy.py.tmpl": "{package}/strategy.py",
    "test_strategy.py.tmpl": "tests/test_strategy.py",
}


def memory_commands(commands: Any) -> None:
    memory = commands.add_parser("memory", help="memory strategies").add_subparsers(required=True)
    strategies = memory.add_parser(
        "strategies", help="the installed strategies: package, version and options"
    )
    strategies.add_argument("--json", action="store_true", help="one JSON list")
    strategies.set_defaults(func=_strategies)
    new = memory.add_parser("new", help="write a plug-in project for a new strategy")
    new.add_argument("name", help="the strategy's name (lower case, digits, underscores)")
    new.add_argument(
        "--dir", type=Path, help="where to write it (default: ./parley-NAME, made for it)"
    )
    new.set_defaults(func=_new)
    models = commands.add_parser("models", help="the bundled embedding model")
    prepare = models.add_subparsers(required=True).add_parser(
        "prepare",
        help="build the embedding model's ONNX file now, so the server never loads torch "
        "(make run does it)",
    )
    prepare.set_defaults(func=_prepare_models)


def _prepare_models(_args: argparse.Namespace) -> int:
    from parley.core.config import get_settings
    from parley.wiring.factories import shared_embedder

    settings = get_settings()
    embedder = shared_embedder(settings)
    embedder.embed(["warm up"])
    where = settings.resolved_models_dir
    if embedder.runtime != "onnx":
        print(f"The embedding model runs on torch here (no ONNX file in {where}).")
        return 0
    print(f"The embedding model is ready in {where}.")
    return 0


def strategy_rows() -> list[dict[str, Any]]:
    """Every installed strategy as `parley memory strategies --json` prints it, with its
    options' values as the environment sets them (a `ConfigurationError` if one is wrong)."""
    # Imported here, not at the top: see the module docstring.
    from parley.core.config import get_settings
    from parley.memory import describe_options, installed
    from parley.memory.registry import environment_options

    settings = get_settings()
    found = installed()
    values = environment_options(found, settings.memory_options())
    rows = []
    for name in sorted(found):
        strategy = found[name]
        chosen = values[name].model_dump(mode="json")
        rows.append(
            {
                "name": name,
                "package": strategy.package,
                "version": strategy.version,
                "default": name == settings.memory_strategy,
                "options": [
                    {
                        "name": option.name,
                        "type": option.type,
                        "default": option.default,
                        "value": chosen.get(option.name),
                        "description": option.description,
                    }
                    for option in describe_options(strategy.options_model)
                ],
            }
        )
    return rows


def _strategies(args: argparse.Namespace) -> int:
    rows = strategy_rows()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        default = "  (default)" if row["default"] else ""
        print(f"{row['name']}{default}  ·  {row['package'] or '?'} {row['version'] or ''}".rstrip())
        for option in row["options"]:
            value = json.dumps(option["value"])
            changed = "" if option["value"] == option["default"] else " (from the environment)"
            setting = f"{option['name']} = {value}{changed}"
            print(f"    {setting:<28}  {option['description'] or ''}".rstrip())
    return 0


def _new(args: argparse.Namespace) -> int:
    name: str = args.name
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{name!r} cannot name a strategy: use lower-case words of letters and digits "
            "joined by single underscores, starting with a letter (at most 40 characters), "
            "e.g. questions_only."
        )
    target: Path = args.dir or Path.cwd() / f"parley-{name.replace('_', '-')}"
    written = write_plugin(name, target)
    print(f"Wrote the `{name}` strategy plug-in in {target}:")
    for path in written:
        print(f"  {path.relative_to(target)}")
    print(f"Next: cd {target} && pip install -e . && python -m pytest")
    return 0


def write_plugin(name: str, target: Path) -> list[Path]:
    """Write the plug-in project for strategy `name` into `target` (new or empty); the files."""
    # Imported here, not at the top: see the module docstring.
    from importlib.resources import files

    from parley.memory import installed

    taken = installed().get(name)
    if taken is not None:
        raise InvalidInput(
            f"A strategy named {name!r} is already installed (from {taken.package}); "
            "choose another name."
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} already exists and is not an empty folder.")
    package = f"parley_{name}"
    values = {
        "name": name,
        "NAME": name.upper(),
        "package": package,
        "dist": f"parley-{name.replace('_', '-')}",
        "cls": "".join(part.capitalize() for part in name.split("_") if part) or "Strategy",
    }
    templates = files("parley.memory").joinpath("template")
    rendered = {
        target / destination.format(package=package): Template(
            templates.joinpath(source).read_text(encoding="utf-8")
        ).substitute(values)
        for source, destination in _FILES.items()
    }
    _check_names(name, values["cls"], package, rendered)  # before anything is written
    written = []
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    marker = target / package / "py.typed"  # its types reach the projects that use it
    marker.write_text("")
    written.append(marker)
    return written


def _check_names(name: str, cls: str, package: str, rendered: dict[Path, str]) -> None:
    """The generated code must compile, and its class must not shadow a name the
    generated modules import (`context_request` would make `ContextRequest`)."""
    import ast

    imported: set[str] = set()
    for path, text in rendered.items():
        if path.suffix != ".py":
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            raise InvalidInput(f"{name!r} cannot name a strategy: choose another.") from None
        for node in ast.walk(tree):
            own = isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package)
            if isinstance(node, ast.Import | ast.ImportFrom) and not own:
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if cls in imported or cls in {"None", "True", "False"}:
        raise InvalidInput(
            f"{name!r} cannot name a strategy: its class {cls} would hide a name the "
            "plug-in's code uses; choose another."
        )


__all__ = ["memory_commands", "strategy_rows", "write_plugin"]
