"""Measure a memory strategy on long conversations written by others (LoCoMo format).

For each conversation, every turn is fed in order through the strategy's normal
path (`observe` after each turn; speaker_a is the user, speaker_b the assistant;
each turn keeps its speaker's name and its session's date). Then, for every
question of categories 1–4, the strategy builds the context under the budget:

- evidence recall: the share of the question's evidence turns whose text is in the context;
- answer recall: the share of questions whose gold answer (case and punctuation
  normalised) is in the context;
- tokens per question, assembly latency (the question's embedding included;
  ingestion excluded) and ingestion throughput.

Malformed evidence ids (`D8:6; D9:17`, `D30:05`) are normalised; items without a
usable one are skipped.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from parley.core.background import BackgroundWork
from parley.core.config import ProviderChoice, Settings
from parley.core.errors import InvalidInput
from parley.memory import ContextRequest, MemoryStrategy, Turn
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.wiring import build_services

BENCH_SYSTEM = "You are a helpful assistant. Answer from the conversation history."
CATEGORIES = (1, 2, 3, 4)
_EVIDENCE = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")
_PUNCTUATION = re.compile(r"[^\w\s]")


def evidence_ids(raw: Sequence[str]) -> list[str]:
    """`["D8:6; D9:17", "D30:05"]` → `["D8:6", "D9:17", "D30:5"]`; junk is dropped."""
    found: list[str] = []
    for item in raw:
        for session, turn in _EVIDENCE.findall(str(item)):
            key = f"D{int(session)}:{int(turn)}"
            if key not in found:
                found.append(key)
    return found


def normalise(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _parse_date(text: str) -> datetime | None:
    for pattern in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
        try:
            return datetime.strptime(text.strip(), pattern)
        except ValueError:
            continue
    return None


@dataclass
class BenchConversation:
    sample_id: str
    turns: list[Turn]
    dia_to_turn: dict[str, int]
    questions: list[dict[str, Any]]


def load(path: Path) -> list[BenchConversation]:
    data = json.loads(path.read_text(encoding="utf-8"))
    loaded: list[BenchConversation] = []
    for index, sample in enumerate(data):
        body = sample["conversation"]
        speaker_a = body.get("speaker_a")
        numbers = sorted(
            int(m.group(1))
            for key in body
            if (m := re.fullmatch(r"session_(\d+)", key)) and isinstance(body[key], list)
        )
        turns: list[Turn] = []
        dia_to_turn: dict[str, int] = {}
        for number in numbers:
            when = str(body.get(f"session_{number}_date_time", ""))
            label = f"Session {number}, {when}" if when else f"Session {number}"
            created = _parse_date(when)
            for raw in body[f"session_{number}"]:
                text = str(raw.get("text", ""))
                if raw.get("blip_caption"):
                    text = f"{text} [shares a photo: {raw['blip_caption']}]"
                turn = Turn(
                    id=len(turns) + 1,
                    role="user" if raw.get("speaker") == speaker_a else "assistant",
                    content=text,
                    created_at=created,
                    speaker=str(raw.get("speaker") or "") or None,
                    session=label,
                )
                turns.append(turn)
                for key in evidence_ids([str(raw.get("dia_id", ""))]):
                    dia_to_turn[key] = turn.id
        loaded.append(
            BenchConversation(
                sample_id=str(sample.get("sample_id", index)),
                turns=turns,
                dia_to_turn=dia_to_turn,
                questions=list(sample.get("qa", [])),
            )
        )
    return loaded


@dataclass
class Scores:
    evidence: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        return {
            "questions": len(self.evidence),
            "evidence_recall": round(statistics.fmean(self.evidence), 4) if self.evidence else 0.0,
            "answer_recall": round(statistics.fmean(self.answers), 4) if self.answers else 0.0,
        }


@dataclass
class Result:
    strategy: str
    budget: int
    overall: Scores = field(default_factory=Scores)
    per_category: dict[int, Scores] = field(default_factory=lambda: defaultdict(Scores))
    tokens: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    over_budget: int = 0
    ingested_turns: int = 0
    ingest_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        overall = self.overall.summary()
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "questions": overall["questions"],
            "evidence_recall": overall["evidence_recall"],
            "answer_recall": overall["answer_recall"],
            "tokens_mean": round(statistics.fmean(self.tokens), 1) if self.tokens else 0.0,
            "latency_ms_p50": round(_percentile(self.latencies_ms, 50), 2),
            "latency_ms_p95": round(_percentile(self.latencies_ms, 95), 2),
            "ingest_turns_per_s": round(self.ingested_turns / self.ingest_seconds, 1)
            if self.ingest_seconds
            else 0.0,
            "over_budget": self.over_budget,
            "per_category": {
                str(c): self.per_category[c].summary() for c in sorted(self.per_category)
            },
        }


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(
    path: Path,
    strategy: str,
    budgets: Sequence[int],
    *,
    settings: Settings | None = None,
    limit: int | None = None,
) -> list[Result]:
    """Ingest each conversation once, then answer its questions at every budget."""
    conversations = load(path)[:limit]
    results = [Result(strategy=strategy, budget=b) for b in budgets]
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as folder:
        settings = (settings or Settings()).model_copy(
            update={
                "data_dir": Path(folder),
                "database_url": None,
                "memory_strategy": strategy,
                "provider": ProviderChoice.LOCAL,  # no model is called: extractive summaries
            }
        )
        upgrade(Database(settings.resolved_database_url))
        services = build_services(settings, background=BackgroundWork(workers=0))
        try:
            owner = services.accounts.create_first_admin(name="bench", password="bench-password")
            memory = services.memory.get(strategy)
            for conversation in conversations:
                conversation_id = services.conversations.create(
                    owner, title=conversation.sample_id
                ).id
                started = time.perf_counter()
                for index in range(len(conversation.turns)):
                    memory.observe(conversation_id, conversation.turns[: index + 1])
                elapsed = time.perf_counter() - started
                for result in results:
                    result.ingested_turns += len(conversation.turns)
                    result.ingest_seconds += elapsed
                _ask(memory, conversation_id, conversation, results)
        finally:
            services.close()
    return results


def _ask(
    memory: MemoryStrategy,
    conversation_id: int,
    conversation: BenchConversation,
    results: list[Result],
) -> None:
    texts = {t.id: normalise(t.content) for t in conversation.turns}
    for qa in conversation.questions:
        category = int(qa.get("category", 0))
        if category not in CATEGORIES:
            continue
        wanted = [
            conversation.dia_to_turn[k]
            for k in evidence_ids(qa.get("evidence", []))
            if k in conversation.dia_to_turn
        ]
        if not wanted:
            continue
        question = str(qa["question"])
        answer = normalise(str(qa.get("answer", "")))
        for result in results:
            request = ContextRequest(
                conversation_id=conversation_id,
                system=BENCH_SYSTEM,
                history=conversation.turns,
                question=question,
                budget=result.budget,
            )
            started = time.perf_counter()
            try:
                context = memory.build(request)
            except InvalidInput:
                result.over_budget += 1
                context_text, tokens = "", 0
            else:
                context_text, tokens = normalise(context.text()), context.total_tokens
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            found = sum(1 for turn_id in wanted if texts[turn_id] in context_text)
            evidence = found / len(wanted)
            answered = 1.0 if answer and answer in context_text else 0.0
            for scores in (result.overall, result.per_category[category]):
                scores.evidence.append(evidence)
                scores.answers.append(answered)
            result.tokens.append(tokens)


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| strategy | budget | evidence recall | cat 1 | cat 2 | cat 3 | cat 4 | answer recall "
        "| tokens | p50 ms | p95 ms | over budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r.as_dict()
        cats = [d["per_category"].get(str(c), {}).get("evidence_recall", 0.0) for c in CATEGORIES]
        lines.append(
            f"| {r.strategy} | {r.budget:,} | {d['evidence_recall']:.3f} | "
            + " | ".join(f"{c:.3f}" for c in cats)
            + f" | {d['answer_recall']:.3f} | {d['tokens_mean']:,.0f} | "
            f"{d['latency_ms_p50']:.1f} | {d['latency_ms_p95']:.1f} | {r.over_budget} |"
        )
    return "\n".join(lines)


__all__ = ["Result", "evidence_ids", "format_table", "load", "normalise", "run"]
