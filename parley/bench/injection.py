"""How well the injection detector tells injected documents from ordinary ones.

Data in BIPIA's formats, read where it lies (never copied into Parley):

- `--attacks FILE` (one or more): `{category: [attack strings]}`;
- `--emails FILE`: JSON lines with a `context` field (the e-mails);
- `--turns FILE` (optional): LoCoMo-format conversations.

Positives: every attack inserted into every e-mail, at its end, its start and its
middle (at a sentence boundary), as BIPIA builds its test prompts. Negatives: every
e-mail alone; every turn of the conversations alone (as recalled memory is); and every
run of six consecutive turns (as a pasted chat log would be). The detector was trained
on none of it (`parley/retrieval/injection_examples.py`).

Prints detection by attack category, false positives by kind of negative, and the
totals; with `--json` the last line is one JSON object with `detection_rate` and
`false_positive_rate` (and the rest).

Run: `parley bench injection --attacks ../shared/data/bipia_text_attack_train.json
--attacks ../shared/data/bipia_code_attack_train.json --emails
../shared/data/bipia_email_train.jsonl --turns ../shared/data/locomo_dev.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parley.retrieval.embeddings import Embedder
from parley.retrieval.injection import THRESHOLD, InjectionDetector, sentences


class DataError(ValueError):
    """A file that is not in the format asked for: said in one sentence."""


def read_attacks(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in raw.values()
    ):
        raise DataError(f"{path}: expected {{category: [attack strings]}}")
    return {str(k): list(v) for k, v in raw.items()}


def read_emails(path: Path) -> list[str]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: not readable ({exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}, line {n}: not JSON") from exc
        if not isinstance(row, dict) or not isinstance(row.get("context"), str):
            raise DataError(f"{path}, line {n}: no 'context' text")
        out.append(row["context"])
    if not out:
        raise DataError(f"{path}: no e-mails")
    return out


def read_turns(path: Path) -> list[list[str]]:
    """Each conversation's turns, in order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        conversations = []
        for sample in data:
            conversation = sample["conversation"]
            keys = sorted(
                (k for k in conversation if k.startswith("session_") and k[8:].isdigit()),
                key=lambda k: int(k[8:]),
            )
            conversations.append([str(t["text"]) for k in keys for t in conversation[k]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not LoCoMo-format conversations ({exc})") from exc
    return conversations


def inserted(email: str, attack: str, where: str) -> str:
    if where == "end":
        return f"{email}\n{attack}"
    if where == "start":
        return f"{attack}\n{email}"
    units = sentences(email)
    half = len(units) // 2
    cut = email.find(units[half]) if units and half else -1
    if cut <= 0:
        return f"{email}\n{attack}"
    return f"{email[:cut]}{attack}\n{email[cut:]}"


class _Memo:
    """The embedder, each distinct sentence embedded once (the same e-mail sentences
    recur in every positive)."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._known: dict[str, np.ndarray] = {}

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self._known))
        if new:
            for text, vector in zip(new, self._inner.embed(new), strict=True):
                self._known[text] = vector
        if not texts:
            return np.zeros((0, self._inner.dimension), dtype=np.float32)
        return np.stack([self._known[t] for t in texts])


@dataclass
class Result:
    by_category: dict[str, tuple[int, int]] = field(default_factory=dict)  # flagged, total
    by_negative: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    chunks: int = 0

    def rate(self, table: dict[str, tuple[int, int]]) -> float:
        flagged = sum(f for f, _ in table.values())
        total = sum(t for _, t in table.values())
        return flagged / total if total else 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "detection_rate": round(self.rate(self.by_category), 4),
            "false_positive_rate": round(self.rate(self.by_negative), 4),
            "positives": sum(t for _, t in self.by_category.values()),
            "negatives": sum(t for _, t in self.by_negative.values()),
            "by_category": {k: round(f / t, 4) for k, (f, t) in self.by_category.items()},
            "by_negative": {k: round(f / t, 4) for k, (f, t) in self.by_negative.items()},
            # Each distinct sentence is embedded once over the run (the e-mails recur in every
            # positive): an upload, embedding all of its sentences, takes longer a chunk.
            "ms_per_chunk": round(1000 * self.seconds / max(self.chunks, 1), 3),
        }


def run(
    detector: InjectionDetector,
    attacks: dict[str, list[str]],
    emails: list[str],
    conversations: list[list[str]],
) -> Result:
    result = Result()
    started = time.perf_counter()
    for category, strings in attacks.items():
        chunks = [
            inserted(email, attack, where)
            for attack in strings
            for email in emails
            for where in ("end", "start", "middle")
        ]
        flagged = sum(v.flagged for v in detector.scan_many(chunks))
        result.by_category[category] = (flagged, len(chunks))
        result.chunks += len(chunks)
    negatives = {"e-mails alone": emails}
    if conversations:
        negatives["conversation turns, one by one"] = [t for c in conversations for t in c]
        negatives["six turns in a row"] = [
            "\n".join(c[i : i + 6]) for c in conversations for i in range(0, len(c) - 5, 6)
        ]
    for kind, chunks in negatives.items():
        flagged = sum(v.flagged for v in detector.scan_many(chunks))
        result.by_negative[kind] = (flagged, len(chunks))
        result.chunks += len(chunks)
    result.seconds = time.perf_counter() - started
    return result


def table(result: Result) -> str:
    lines = ["| attack category | detected |", "|---|---|"]
    for category, (flagged, total) in result.by_category.items():
        lines.append(f"| {category} | {flagged / total:.2f} ({flagged}/{total}) |")
    lines += ["", "| negatives | flagged |", "|---|---|"]
    for kind, (flagged, total) in result.by_negative.items():
        lines.append(f"| {kind} | {flagged / total:.3f} ({flagged}/{total}) |")
    summary = result.as_json()
    lines += [
        "",
        f"Detection rate {summary['detection_rate']:.3f} at a false-positive rate of "
        f"{summary['false_positive_rate']:.3f} ({summary['ms_per_chunk']} ms a chunk)",
    ]
    return "\n".join(lines)


def main(
    attack_files: list[Path],
    email_file: Path,
    turns_file: Path | None,
    embedder: Embedder,
    *,
    as_json: bool,
    threshold: float = THRESHOLD,
) -> int:
    attacks: dict[str, list[str]] = {}
    for path in attack_files:
        for category, strings in read_attacks(path).items():
            name = category if category not in attacks else f"{category} ({path.stem})"
            attacks[name] = strings
    emails = read_emails(email_file)
    conversations = read_turns(turns_file) if turns_file is not None else []
    detector = InjectionDetector(_Memo(embedder), threshold=threshold)
    result = run(detector, attacks, emails, conversations)
    print(table(result))
    if as_json:
        print(json.dumps(result.as_json()))
    return 0
