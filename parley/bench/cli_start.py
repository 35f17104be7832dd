"""How long the `parley` command takes, as a whole process, for commands that call no model.

An operator types `parley user list` and waits for the interpreter, the imports, the
settings, the database and the answer; this measures exactly that wait (wall clock,
from starting the process to its exit), so an import that drags in a heavy library
(the model SDK, the embeddings, Chroma, the benchmarks) shows here first.

Every command runs against one fresh data directory, migrated and holding one admin
before the timing starts, with no developer's `PARLEY_*` or `ANTHROPIC_*` settings.
"user list (Claude configured)" sets an API key too: the services then choose Claude,
and a command that calls no model must still not load its SDK. `python -c pass` is
the floor of the interpreter alone; `import pydantic_settings, sqlalchemy.orm` what the
libraries of any command that reads the database cost a program that imports them
plainly. Each command runs `--warmup` times untimed (the disk cache), then `--runs`
rounds of every command in turn.

Run: `.venv/bin/python -m parley.bench.cli_start [--runs 20] [--warmup 2]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ADMIN = "bench-admin"
# What every command that reads the database imports before any of Parley's own code:
# the settings' library and the ORM, imported here as any program would (the cyclic
# collector on; `parley` holds it off while it starts, see `parley.cli.common.starting`).
FLOOR = "import pydantic_settings, sqlalchemy.orm"


@dataclass(frozen=True)
class Case:
    label: str
    argv: Sequence[str]
    env: Mapping[str, str]


def parley_command() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("parley")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "parley.cli.main"]


def clean_environment(data_dir: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARLEY_", "ANTHROPIC_"))
    }
    env["PARLEY_DATA_DIR"] = str(data_dir)
    return env


def run_once(case: Case) -> float:
    """Wall-clock milliseconds of one run; a failing command ends the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(
        case.argv, env=case.env, capture_output=True, text=True, timeout=120, check=False
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{case.label!r} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def prepare(parley: Sequence[str], env: Mapping[str, str]) -> None:
    """Migrate the fresh data directory and create one admin, untimed."""
    for args, stdin in (
        (["db", "upgrade"], ""),
        (["user", "add", ADMIN, "--admin"], "pw-bench-1\n"),
    ):
        done = subprocess.run(
            [*parley, *args], env=env, input=stdin, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"parley {' '.join(args)} failed: {done.stderr.strip()}")


def cases(parley: Sequence[str], env: Mapping[str, str]) -> list[Case]:
    with_claude = {**env, "ANTHROPIC_API_KEY": "sk-ant-bench-never-sent"}
    return [
        Case("python -c pass", [sys.executable, "-c", "pass"], env),
        Case(f"libraries alone: {FLOOR}", [sys.executable, "-c", FLOOR], env),
        Case("parley --help", [*parley, "--help"], env),
        Case("parley user list", [*parley, "user", "list"], env),
        Case("parley user list (Claude configured)", [*parley, "user", "list"], with_claude),
        Case("parley quota show ADMIN", [*parley, "quota", "show", ADMIN], env),
        Case("parley memory strategies", [*parley, "memory", "strategies"], env),
        Case("parley audit verify", [*parley, "audit", "verify"], env),
    ]


def p95(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    args = parser.parse_args()
    parley = parley_command()
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as folder:
        env = clean_environment(Path(folder) / "data")
        prepare(parley, env)
        todo = cases(parley, env)
        for case in todo:
            for _ in range(args.warmup):
                run_once(case)
        # Round-robin, so a busy moment of the machine falls on every command alike.
        times: dict[str, list[float]] = {case.label: [] for case in todo}
        for run in range(args.runs):
            for case in todo:
                times[case.label].append(run_once(case))
            print(f"round {run + 1} of {args.runs}", file=sys.stderr, flush=True)
        rows = list(times.items())

    width = max(len(label) for label, _ in rows)
    print(f"`parley` start-up, wall clock per process ({' '.join(parley)})")
    print(f"| {'command':<{width}} | {'runs':>4} | {'median ms':>9} | {'p95 ms':>7} |")
    print(f"|{'-' * (width + 2)}|{'-' * 6}|{'-' * 11}|{'-' * 9}|")
    for label, values in rows:
        print(
            f"| {label:<{width}} | {len(values):>4} | {statistics.median(values):>9.0f} "
            f"| {p95(values):>7.0f} |"
        )


if __name__ == "__main__":
    main()
