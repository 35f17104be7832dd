"""Rolling summaries: stored with a version and the turns they cover, made off the hot path.

A `Summarizer` writes the next version from the previous one and the newly folded
turns. `ExtractiveSummarizer` keeps the most informative sentences verbatim and needs
no model; the chat layer supplies one that asks the model
(`parley.chat.conversation.model_summaries`), so memory itself never calls a provider.
Folds lock per conversation: the folds of
different conversations never wait for each other's model call.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from parley.core.errors import StorageConflict
from parley.core.tokens import count_tokens
from parley.memory.base import Turn, turn_tokens
from parley.store.db import Database
from parley.store.models import Conversation
from parley.store.models import Summary as SummaryRow

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    {
        "a",
        "n",
        "d",
        "r",
        "e",
        "s",
        "t",
        "b",
        "u",
        "y",
        "f",
        "o",
        "m",
        "h",
        "v",
        "i",
        "w",
        "c",
        "l",
        "j",
    }
)


@dataclass(frozen=True, slots=True)
class Summary:
    """One version of a conversation's rolling summary, and the turns folded into it."""

    conversation_id: int
    version: int
    first_turn_id: int
    last_turn_id: int
    text: str
    method: str


class SummaryStorage(Protocol):
    """Where summaries are kept: the database (`SummaryStore`), or memory in tests
    (`InMemorySummaryStore`)."""

    def latest(
        self,
        conversation_id: int,
        *,
        up_to_turn: int | None = None,
        on_path: Collection[int] | None = None,
    ) -> Summary | None:
        """The version furthest along (the highest last turn, then the newest) of those
        that cover no turn after `up_to_turn` and whose last turn is one of `on_path`
        (the turns of a branch: a summary folded on another branch is never this one's)."""
        ...

    def save(
        self,
        conversation_id: int,
        *,
        text: str,
        first_turn_id: int,
        last_turn_id: int,
        method: str,
        model: str | None,
    ) -> Summary:
        """Store the next version (the previous one plus one) and return it."""
        ...


class InMemorySummaryStore:
    """Summaries in this process's memory: for tests and for trying a strategy out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[int, list[Summary]] = {}

    def latest(
        self,
        conversation_id: int,
        *,
        up_to_turn: int | None = None,
        on_path: Collection[int] | None = None,
    ) -> Summary | None:
        with self._lock:
            versions = self._versions.get(conversation_id, [])
            fitting = [s for s in versions if _fits(s.last_turn_id, up_to_turn, on_path)]
            return max(fitting, key=lambda s: (s.last_turn_id, s.version), default=None)

    def save(
        self,
        conversation_id: int,
        *,
        text: str,
        first_turn_id: int,
        last_turn_id: int,
        method: str,
        model: str | None,
    ) -> Summary:
        del model  # the database keeps it for provenance; a summary itself does not carry it
        with self._lock:
            versions = self._versions.setdefault(conversation_id, [])
            summary = Summary(
                conversation_id=conversation_id,
                version=len(versions) + 1,
                first_turn_id=first_turn_id,
                last_turn_id=last_turn_id,
                text=text,
                method=method,
            )
            versions.append(summary)
            return summary


class SummaryStore:
    """Summaries in the `summaries` table (deleted with their conversation)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def latest(
        self,
        conversation_id: int,
        *,
        up_to_turn: int | None = None,
        on_path: Collection[int] | None = None,
    ) -> Summary | None:
        """The newest version; or the newest that covers no turn after `up_to_turn`, and
        whose last turn is one of `on_path`."""
        query = select(SummaryRow.id, SummaryRow.last_turn_id).where(
            SummaryRow.conversation_id == conversation_id
        )
        if up_to_turn is not None:
            query = query.where(SummaryRow.last_turn_id <= up_to_turn)
        with self._db.session() as session:
            # The one furthest along the branch (then the newest): after an edit deep in
            # a conversation, the new branch's first fold may end in the shared part.
            order = (SummaryRow.last_turn_id.desc(), SummaryRow.version.desc())
            for row in session.execute(query.order_by(*order)):
                if _fits(row.last_turn_id, None, on_path):
                    found = session.get(SummaryRow, row.id)
                    return _to_summary(found) if found else None
            return None

    def save(
        self,
        conversation_id: int,
        *,
        text: str,
        first_turn_id: int,
        last_turn_id: int,
        method: str,
        model: str | None,
    ) -> Summary:
        """The next version. Folds of one conversation by several processes take turns
        on the conversation's row; should two still read the same last version, the
        second to write is refused by the unique (conversation, version) and writes the
        one after (both folds are true summaries of the same turns: the newest is
        read)."""
        for attempt in range(5):
            try:
                with self._db.session(write_lock=True) as session:
                    # One fold of a conversation at a time (PostgreSQL: its row's lock;
                    # SQLite: the write lock already serialises writers).
                    session.execute(
                        select(Conversation.id)
                        .where(Conversation.id == conversation_id)
                        .with_for_update()
                    )
                    version = (
                        session.scalar(
                            select(func.max(SummaryRow.version)).where(
                                SummaryRow.conversation_id == conversation_id
                            )
                        )
                        or 0
                    ) + 1
                    row = SummaryRow(
                        conversation_id=conversation_id,
                        version=version,
                        first_turn_id=first_turn_id,
                        last_turn_id=last_turn_id,
                        content=text,
                        method=method,
                        model=model,
                    )
                    session.add(row)
                    session.flush()
                    return _to_summary(row)
            except StorageConflict:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")


def _fits(last_turn_id: int, up_to_turn: int | None, on_path: Collection[int] | None) -> bool:
    return (up_to_turn is None or last_turn_id <= up_to_turn) and (
        on_path is None or last_turn_id in on_path
    )


def _to_summary(row: SummaryRow) -> Summary:
    return Summary(
        conversation_id=row.conversation_id,
        version=row.version,
        first_turn_id=row.first_turn_id,
        last_turn_id=row.last_turn_id,
        text=row.content,
        method=row.method,
    )


@dataclass(frozen=True, slots=True)
class SummaryDraft:
    """A summarizer's output: the text, how it was made, and by which model (if any)."""

    text: str
    method: str  # "model" or "extractive"
    model: str | None = None


class Summarizer(Protocol):
    def summarize(
        self, conversation_id: int, previous: str | None, turns: Sequence[Turn], max_tokens: int
    ) -> SummaryDraft:
        """Fold `turns` into `previous` (None: the first summary) within `max_tokens`."""
        ...


def turn_line(turn: Turn) -> str:
    when = (
        f" ({turn.session or f'{turn.created_at:%d %b %Y}'})"
        if (turn.session or turn.created_at)
        else ""
    )
    return f"{turn.label}{when}: {' '.join(turn.content.split())}"


class ExtractiveSummarizer:
    """Keeps whole sentences, chosen for rare content words, names and numbers, in order."""

    def summarize(
        self, conversation_id: int, previous: str | None, turns: Sequence[Turn], max_tokens: int
    ) -> SummaryDraft:
        del conversation_id  # the text alone decides
        candidates: list[str] = [line for line in (previous or "").splitlines() if line.strip()]
        for turn in turns:
            prefix = turn_line(
                Turn(turn.id, turn.role, "", turn.created_at, turn.speaker, turn.session)
            )
            for sentence in _SENTENCE.split(" ".join(turn.content.split())):
                if len(sentence) > 12:
                    candidates.append(f"{prefix}{sentence}")
        if not candidates:
            return SummaryDraft(previous or "", "extractive")
        words = [set(_WORD.findall(c.lower())) - _STOP for c in candidates]
        document_frequency = Counter(w for ws in words for w in ws)
        total = len(candidates)

        def salience(index: int) -> float:
            text = candidates[index]
            rare = sum(1.0 / document_frequency[w] for w in words[index])
            names = len(re.findall(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+", text.split(": ", 1)[-1]))
            numbers = len(re.findall(r"\d", text))
            recency = 0.2 * index / total  # later facts may update earlier ones
            return (rare + 0.5 * names + 0.3 * min(numbers, 4)) / (1 + len(text) / 400) + recency

        ranked = sorted(range(total), key=salience, reverse=True)
        chosen: list[int] = []
        used = 0
        for index in ranked:
            cost = count_tokens(candidates[index]) + 1
            if used + cost <= max_tokens:
                chosen.append(index)
                used += cost
        return SummaryDraft("\n".join(candidates[i] for i in sorted(chosen)), "extractive")


class _ConversationLocks:
    """One lock per conversation, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, conversation_id: int) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(conversation_id, (threading.Lock(), 0))
            self._locks[conversation_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[conversation_id]
                if users == 1:
                    del self._locks[conversation_id]
                else:
                    self._locks[conversation_id] = (lock, users - 1)


class SummaryOptions(BaseModel):
    """The options of a strategy that keeps a rolling summary (`summary_buffer`, `hybrid`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fold_tokens: int = Field(
        default=3000, ge=200, description="unsummarized tokens that trigger a summary fold"
    )
    summary_tokens: int = Field(default=400, ge=50, description="longest summary, in tokens")


class RollingSummary:
    """Folds the oldest unsummarized turns into the next summary version when they pile up.

    Unsummarized turns are those after the latest summary's `last_turn_id`. When
    they exceed `fold_tokens`, the oldest of them are folded until about half
    remain. Strategies call `maybe_fold` from `observe` (off the hot path) and
    `latest` from `build`, so the summary changes only at a fold.
    """

    def __init__(
        self,
        store: SummaryStorage,
        summarizer: Summarizer,
        *,
        fold_tokens: int,
        summary_tokens: int,
    ) -> None:
        self._store = store
        self._summarizer = summarizer
        self._fold_tokens = fold_tokens
        self._summary_tokens = summary_tokens
        self._locks = _ConversationLocks()

    def latest(self, conversation_id: int, history: Sequence[Turn]) -> Summary | None:
        """The newest summary of turns in `history`: folded on its branch (a summary ends
        at a turn of the branch it was folded on, and a branch's turns down to any of its
        own are every branch's that holds it), and no later than its last turn (a replay
        of an old turn sees no later one)."""
        if not history:
            return None
        return self._store.latest(
            conversation_id, up_to_turn=history[-1].id, on_path={t.id for t in history}
        )

    def unsummarized(self, history: Sequence[Turn], summary: Summary | None) -> list[Turn]:
        if summary is None:
            return list(history)
        return [t for t in history if t.id > summary.last_turn_id]

    def maybe_fold(self, conversation_id: int, history: Sequence[Turn]) -> Summary | None:
        # One fold at a time per conversation; a concurrent observe then sees the new version.
        with self._locks.hold(conversation_id):
            summary = self.latest(conversation_id, history)
            pending = self.unsummarized(history, summary)
            sizes = [turn_tokens(t) for t in pending]
            if sum(sizes) <= self._fold_tokens:
                return None
            keep, folded = sum(sizes), 0
            while folded < len(pending) and keep > self._fold_tokens // 2:
                keep -= sizes[folded]
                folded += 1
            to_fold = pending[:folded]
            draft = self._summarizer.summarize(
                conversation_id, summary.text if summary else None, to_fold, self._summary_tokens
            )
            return self._store.save(
                conversation_id,
                text=draft.text,
                first_turn_id=summary.first_turn_id if summary else to_fold[0].id,
                last_turn_id=to_fold[-1].id,
                method=draft.method,
                model=draft.model,
            )


def fit_summary(summary: Summary | None, max_tokens: int) -> Summary | None:
    """The summary cut to `max_tokens` by dropping its oldest lines (None if nothing fits).

    Deterministic for a given version and allotment, so the prompt prefix stays stable.
    """
    if summary is None:
        return None
    lines = [line for line in summary.text.splitlines() if line.strip()]
    # About 80 tokens go to the envelope around it: tags with their boundary, the intro.
    while lines and count_tokens("\n".join(lines)) + 80 > max_tokens:
        lines.pop(0)
    if not lines:
        return None
    return Summary(
        conversation_id=summary.conversation_id,
        version=summary.version,
        first_turn_id=summary.first_turn_id,
        last_turn_id=summary.last_turn_id,
        text="\n".join(lines),
        method=summary.method,
    )
