"""The README's memory table: every strategy at 1,000, 2,000 and 4,000 tokens, `full` as reference.

Each strategy ingests every conversation once (through its normal `observe` path)
and answers each question at all three budgets. `full` is also run with a budget
large enough for the longest conversation, as the reference.

Run: `make bench` or `.venv/bin/python -m parley.bench.memory_table [--data FILE] [--limit N]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parley.bench.locomo import format_table, run
from parley.core.config import Settings
from parley.memory.registry import available

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo_dev.json"
BUILT_IN_ORDER = ["full", "window", "token_window", "summary_buffer", "vector_recall", "hybrid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, help="only the first N conversations")
    parser.add_argument("--strategy", action="append", help="only these strategies")
    args = parser.parse_args()
    names = args.strategy or [n for n in BUILT_IN_ORDER if n in available()]
    results = []
    for name in names:
        budgets = [1000, 2000, 4000] + ([50_000] if name == "full" else [])
        batch = run(args.data, name, budgets, settings=Settings(), limit=args.limit)
        results += batch
        print(f"{name}: ingestion {batch[0].as_dict()['ingest_turns_per_s']} turns/s", flush=True)
    print(format_table(results))


if __name__ == "__main__":
    main()
