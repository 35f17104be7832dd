"""What PII redaction costs a request, and what it catches on ordinary conversation.

The turns of LoCoMo-format conversations (`--data`), one in `--every` given a personal
value (an e-mail, a phone number, a card, an IBAN or a national id, drawn in turn),
make prompts of 40, 440 and 2,000 turns (the first turns of every conversation, in
order). For each size, timed `--runs` times:

- "cold": a new `Redactor` (nothing read before), every turn redacted;
- "warm": the same prompt again, as the next turn of a chat sends it: the history was
  read last time (the memo), only the new question is;
- and over all turns: how many values were put in, how many found, and how many
  turns without one had something replaced anyway (false positives).

Run: `.venv/bin/python -m parley.bench.redaction --data ../shared/data/locomo_dev.json
[--every 10] [--runs 5] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from parley.chat.gateway.redaction import Redactor, redactor_key

SIZES = (40, 440, 2000)
VALUES = (
    "ana.lopez@example.org",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "536-90-4399",
    "(415) 555-2671",
    "GB82WEST12345698765432",
    "AB 12 34 56 C",
)


def turns(data: Path) -> list[str]:
    """Every turn of every conversation, in order."""
    out: list[str] = []
    for sample in json.loads(data.read_text()):
        conversation = sample["conversation"]
        sessions = sorted(
            (k for k in conversation if k.startswith("session_") and k[8:].isdigit()),
            key=lambda k: int(k[8:]),
        )
        for key in sessions:
            out.extend(str(turn.get("text", "")) for turn in conversation[key])
    return out


def seeded(texts: list[str], every: int) -> list[tuple[str, bool]]:
    """The turns, one in `every` with a value added; each with whether it has one."""
    out = []
    for i, text in enumerate(texts):
        if i % every == every - 1:
            out.append((f"{text} You can reach me at {VALUES[(i // every) % len(VALUES)]}.", True))
        else:
            out.append((text, False))
    return out


def measure(texts: list[tuple[str, bool]], runs: int) -> dict[str, object]:
    key = redactor_key("bench")
    rows = []
    for size in SIZES:
        prompt = [t for t, _ in texts[:size]]
        chars = sum(len(t) for t in prompt)
        cold, warm = [], []
        for _ in range(runs):
            redactor = Redactor(key)
            start = time.perf_counter()
            for text in prompt:
                redactor.redact(text)
            cold.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            for text in [*prompt[:-1], prompt[-1] + " And one more thing?"]:
                redactor.redact(text)
            warm.append((time.perf_counter() - start) * 1000)
        rows.append(
            {
                "turns": size,
                "chars": chars,
                "cold_ms": round(statistics.median(cold), 1),
                "warm_ms": round(statistics.median(warm), 2),
            }
        )
    redactor = Redactor(key)
    seeded_count = found = false_positive = clean = 0
    for text, has_value in texts:
        result = redactor.redact(text)
        if has_value:
            seeded_count += 1
            found += int(not any(v in result.text for v in VALUES))
        else:
            clean += 1
            false_positive += int(bool(result.counts))
    return {
        "sizes": rows,
        "turns_with_a_value": seeded_count,
        "found": found,
        "turns_without": clean,
        "false_positives": false_positive,
    }


def table(result: dict[str, object]) -> str:
    lines = [
        "| turns in the prompt | characters | cold, ms | warm (next turn), ms |",
        "|---|---|---|---|",
    ]
    for row in result["sizes"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['turns']:,} | {row['chars']:,} | {row['cold_ms']} | {row['warm_ms']} |"
        )
    lines.append("")
    lines.append(
        f"Values put in: {result['turns_with_a_value']}, found: {result['found']}; "
        f"turns without one: {result['turns_without']}, "
        f"with something replaced anyway: {result['false_positives']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="LoCoMo-format JSON")
    parser.add_argument("--every", type=int, default=10, help="one turn in N gets a value")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    try:
        texts = seeded(turns(args.data), max(1, args.every))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.exit(2, f"Could not read {args.data} as LoCoMo-format data: {exc}\n")
    result = measure(texts, max(1, args.runs))
    print(table(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
