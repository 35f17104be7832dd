"""Testing a memory strategy without a database, Chroma or a model.

    from parley.memory.testing import check_strategy, fake_deps

    def test_my_strategy_follows_the_rules() -> None:
        check_strategy(MyStrategy)                      # its default options
        check_strategy(MyStrategy, options={"max_turns": 2})

    def test_my_strategy_keeps_two_turns() -> None:
        strategy = MyStrategy(fake_deps(MyStrategy, max_turns=2))
        ...

`fake_deps` builds a strategy's dependencies in memory: summaries in a dict, the
extractive summarizer, and a recall index over the hashing embedder (no model, no
Chroma). `check_strategy` runs a strategy through generated conversations — no
history, one turn, a few, many; short turns, long ones, both; budgets from one too
small for the question to generous — calling `observe` as the app does (after each
answer, with every stored turn), and raises `RuleBroken`, an `AssertionError` naming
the first rule broken (`Rule`):

    never over budget          the prompt it returns, counted afresh (`prompt_tokens`:
                               the system prompt and each message), fits the budget
    the operator's system      `ContextWindow.system` is `request.system`, unchanged
    the question comes last    the last message is the user's and ends with the question
    a user turn first          the messages start with a user message
    honest turn ids            every id in `turn_ids` is a turn of the history whose text
                               is in the prompt, and every turn whose text is in the
                               prompt is claimed (or covered by `summary_covers`)
    observe twice is harmless  observing the same turns again changes no prompt
    an empty history works     with no turns, any budget that holds the question works
    a clear refusal            a prompt that cannot be built is refused with
                               `InvalidInput`, never another exception
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import count

from pydantic import BaseModel, ValidationError

from parley.core.errors import InvalidInput
from parley.core.records import Provenance
from parley.core.tokens import count_tokens
from parley.memory.assembly import prompt_tokens
from parley.memory.base import ContextRequest, ContextWindow, MemoryStrategy, Turn, message_tokens
from parley.memory.options import UncheckedOptions, options_model, validated
from parley.memory.registry import MemoryDeps, StrategyFactory
from parley.memory.summaries import ExtractiveSummarizer, InMemorySummaryStore
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.turn_recall import RecallIndex

SYSTEM = "You are a careful assistant. Answer from what was said in this conversation."
QUESTION = "Which harbour did we agree to sail from, and when?"
LENGTHS = (1, 2, 3, 8, 24)  # 1 and 3: the last answer failed, the history ends with a question
SIZES = ("short", "long", "mixed")
BUDGETS = (120, 400, 1500, 8000)


class Rule(StrEnum):
    """The rules `check_strategy` holds a strategy to."""

    BUDGET = "never over budget"
    SYSTEM = "the system prompt is the operator's alone"
    QUESTION = "the question is the last message"
    USER_FIRST = "the messages start with a user turn"
    TURN_IDS = "turn_ids name exactly the turns whose text is in the prompt"
    OBSERVE_TWICE = "observe may be called twice with the same turns"
    EMPTY_HISTORY = "an empty history works"
    CLEAR_REFUSAL = "a prompt that cannot be built is refused with InvalidInput"
    NO_SOURCES = "a strategy attaches no sources (documents are added by the chat layer)"
    RECORDABLE = "what it reports can be kept with the answer (whole token counts)"


class RuleBroken(AssertionError):
    """A strategy broke `rule` in the conversation `scenario` describes."""

    def __init__(self, strategy: str, rule: Rule, detail: str, scenario: str) -> None:
        super().__init__(f"{strategy} breaks the rule '{rule}': {detail} [{scenario}]")
        self.rule = rule
        self.detail = detail
        self.scenario = scenario


def fake_deps(factory: StrategyFactory | None = None, /, **options: object) -> MemoryDeps:
    """A strategy's dependencies with no database, Chroma or model: summaries in memory,
    `ExtractiveSummarizer`, and a `RecallIndex` over `HashingEmbedder` that stores nothing.

    `options` are the strategy's own; given its `factory`, they are checked by its
    `Options` model now (an `InvalidInput` sentence if they do not suit it), else when the
    strategy reads them (`MemoryDeps.options_as`).
    """
    checked: BaseModel
    if factory is not None:
        checked = validated(_name_of(factory), options_model(factory), {}, options, stored=False)
    else:
        checked = UncheckedOptions(**options)
    return MemoryDeps(
        summaries=InMemorySummaryStore(),
        summarizer=ExtractiveSummarizer(),
        recall_factory=lambda: RecallIndex(embedder=HashingEmbedder(), store=None),
        options=checked,
    )


def _name_of(factory: object) -> str | None:
    name = getattr(factory, "name", None)  # a class's `name`; a plain function has none
    return name if isinstance(name, str) else None


# --- generated conversations -----------------------------------------------------------

_VOCABULARY = """
anchor ferry harbour lighthouse tide chart compass rope mast keel gull pier lantern storm
breeze cargo captain deck ledger island reef current buoy dock crew galley hull voyage
sextant channel bay cove signal flare beacon ration barrel timber sail morning evening
Tuesday Friday north south coast village market bread cheese apples
"""
_WORDS = _VOCABULARY.split()


@dataclass(frozen=True, slots=True)
class _Scenario:
    turns: tuple[Turn, ...]
    sizes: str
    counted: bool  # the turns carry their stored token counts, as the database's do

    def describe(self, budget: int | None = None) -> str:
        counted = ", with stored token counts" if self.counted else ""
        at = f", budget {budget}" if budget is not None else ""
        return f"{len(self.turns)} {self.sizes} turns{counted}{at}"


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(6, 14))
    return " ".join(words).capitalize() + "."


def _content(turn_id: int, long: bool, rng: random.Random) -> str:
    # "Note 7:" makes every text unique: none is a part of another.
    sentences = rng.randint(18, 30) if long else rng.randint(1, 2)
    return f"Note {turn_id}: " + " ".join(_sentence(rng) for _ in range(sentences))


def conversation(length: int, sizes: str = "mixed", *, seed: int = 0) -> list[Turn]:
    """`length` alternating turns, the user's first: short ones, long ones, or mixed."""
    rng = random.Random(f"{seed}-{length}-{sizes}")
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    turns = []
    for turn_id in range(1, length + 1):
        long = sizes == "long" or (sizes == "mixed" and turn_id % 3 == 0)
        turns.append(
            Turn(
                id=turn_id,
                role="user" if turn_id % 2 else "assistant",
                content=_content(turn_id, long, rng),
                created_at=start + timedelta(hours=7 * turn_id),
            )
        )
    return turns


def _counted(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    return tuple(
        Turn(t.id, t.role, t.content, t.created_at, t.speaker, t.session, message_tokens(t.content))
        for t in turns
    )


# --- the checks ------------------------------------------------------------------------

_BOUNDARY = re.compile(r"_[0-9a-f]{16}\b")  # an envelope's boundary, random per request


# A turn counts as in the prompt when its whole text, or any piece this long of it, is.
_PIECE = 40


def _quoted(content: str, prompt: str) -> bool:
    """Whether the prompt holds the turn's text, whole or cut (a strategy that trims a
    character off each turn must still claim it)."""
    text = _flat(content)
    if text in prompt:
        return True
    pieces = range(0, len(text) - _PIECE + 1, _PIECE // 2)
    return any(text[i : i + _PIECE] in prompt for i in pieces)


def _flat(text: str) -> str:
    return " ".join(text.split())


Outcome = ContextWindow | InvalidInput


class _Checker:
    def __init__(
        self, factory: StrategyFactory, options: Mapping[str, object], system: str, question: str
    ) -> None:
        self._factory = factory
        self._options = options
        self._system = system
        self._question = question
        self._name = _name_of(factory) or repr(factory)
        self._ids = count(1)

    def fresh(self) -> tuple[MemoryStrategy, MemoryDeps, int]:
        deps = fake_deps(self._factory, **self._options)
        strategy = self._factory(deps)
        self._name = getattr(strategy, "name", self._name)
        return strategy, deps, 100 + next(self._ids)

    @property
    def name(self) -> str:
        return self._name

    def broken(self, rule: Rule, detail: str, scenario: str) -> RuleBroken:
        return RuleBroken(self._name, rule, detail, scenario)

    def build(
        self,
        strategy: MemoryStrategy,
        cid: int,
        turns: Sequence[Turn],
        budget: int,
        where: str,
        *,
        failing: Rule = Rule.CLEAR_REFUSAL,  # the rule an exception other than InvalidInput breaks
    ) -> Outcome:
        request = ContextRequest(
            conversation_id=cid,
            system=self._system,
            history=tuple(turns),
            question=self._question,
            budget=budget,
        )
        try:
            context = strategy.build(request)
        except InvalidInput as exc:
            return exc
        except Exception as exc:
            raise self.broken(failing, f"build raised {exc!r}", where) from exc
        self.check(context, turns, budget, where)
        return context

    def check(self, context: ContextWindow, turns: Sequence[Turn], budget: int, where: str) -> None:
        if context.system != self._system:
            raise self.broken(
                Rule.SYSTEM, f"the system prompt became {context.system[:200]!r}", where
            )
        if not context.messages:
            raise self.broken(Rule.QUESTION, "the prompt has no messages", where)
        if context.messages[0].role != "user":
            raise self.broken(
                Rule.USER_FIRST, f"the first message is the {context.messages[0].role}'s", where
            )
        last = context.messages[-1]
        if last.role != "user" or not (
            last.content == self._question or last.content.endswith("\n" + self._question)
        ):
            raise self.broken(
                Rule.QUESTION,
                f"the last message is the {last.role}'s and ends {last.content[-80:]!r}",
                where,
            )
        with_sources = [i for i, m in enumerate(context.messages) if m.sources]
        if with_sources:
            raise self.broken(
                Rule.NO_SOURCES, f"messages {with_sources} carry sources, uncounted", where
            )
        try:
            Provenance(
                strategy=context.strategy,
                turn_ids=list(context.turn_ids),
                summary_version=context.summary_version,
                summary_covers=context.summary_covers,
                recalled=[{"turn_id": r.turn_id, "score": r.score} for r in context.recalled],
                section_tokens=dict(context.section_tokens),
                total_tokens=context.total_tokens,
            )
        except ValidationError as exc:
            raise self.broken(Rule.RECORDABLE, str(exc).splitlines()[0], where) from None
        self.check_turn_ids(context, turns, where)
        used = prompt_tokens(context)
        if used > budget:
            raise self.broken(
                Rule.BUDGET,
                f"the prompt it returned counts {used} tokens (it reports {context.total_tokens})",
                where,
            )

    def check_turn_ids(self, context: ContextWindow, turns: Sequence[Turn], where: str) -> None:
        prompt = _flat(context.text())
        by_id = {t.id: t for t in turns}
        for turn_id in context.turn_ids:
            turn = by_id.get(turn_id)
            if turn is None:
                raise self.broken(
                    Rule.TURN_IDS, f"it claims turn {turn_id}, which is not in the history", where
                )
            if _flat(turn.content) not in prompt:
                raise self.broken(
                    Rule.TURN_IDS,
                    f"it claims turn {turn_id}, whose text is not in the prompt",
                    where,
                )
        claimed = set(context.turn_ids)
        covers = context.summary_covers
        for turn in turns:
            summarized = covers is not None and covers[0] <= turn.id <= covers[1]
            if turn.id not in claimed and not summarized and _quoted(turn.content, prompt):
                raise self.broken(
                    Rule.TURN_IDS,
                    f"turn {turn.id}'s text is in the prompt, but not in turn_ids",
                    where,
                )


def _shape(outcome: Outcome) -> object:
    """What must not change when the same turns are observed again: everything but the
    random boundaries (and the token counts, which follow them)."""
    if isinstance(outcome, InvalidInput):
        return ("refused", outcome.user_message)
    return (
        outcome.system,
        tuple((m.role, _BOUNDARY.sub("_…", m.content), m.cache) for m in outcome.messages),
        outcome.turn_ids,
        outcome.summary_version,
        outcome.summary_covers,
        outcome.recalled,
    )


def check_strategy(
    factory: StrategyFactory,
    *,
    options: Mapping[str, object] | None = None,
    system: str = SYSTEM,
    question: str = QUESTION,
    seed: int = 0,
) -> None:
    """Run the strategy `factory` makes (with `options`) through generated conversations;
    raise `RuleBroken` naming the first rule it breaks (see the module docstring)."""
    checker = _Checker(factory, options or {}, system, question)
    smallest = count_tokens(system) + message_tokens(question)

    strategy, deps, cid = checker.fresh()
    try:  # no history: every budget that holds the system prompt and the question works
        for budget in (smallest, *BUDGETS):
            where = f"no turns, budget {budget}"
            outcome = checker.build(strategy, cid, (), budget, where, failing=Rule.EMPTY_HISTORY)
            if isinstance(outcome, InvalidInput):
                raise checker.broken(
                    Rule.EMPTY_HISTORY, f"it refused: {outcome.user_message!r}", where
                )
            if outcome.turn_ids:
                raise checker.broken(
                    Rule.EMPTY_HISTORY, f"it claims turns {outcome.turn_ids}", where
                )
    finally:
        deps.close()

    for index, (sizes, length) in enumerate((s, n) for s in SIZES for n in LENGTHS):
        turns = conversation(length, sizes, seed=seed)
        scenario = _Scenario(_counted(turns) if index % 2 else tuple(turns), sizes, bool(index % 2))
        strategy, deps, cid = checker.fresh()
        try:
            _observe_as_the_app_does(checker, strategy, cid, scenario)
            budgets = (smallest - 1, *BUDGETS)  # the first cannot hold the question
            first = {
                b: checker.build(strategy, cid, scenario.turns, b, scenario.describe(b))
                for b in budgets
            }
            _observe(checker, strategy, cid, scenario.turns, scenario.describe())
            for budget in budgets:
                where = scenario.describe(budget)
                again = checker.build(strategy, cid, scenario.turns, budget, where)
                if _shape(again) != _shape(first[budget]):
                    raise checker.broken(
                        Rule.OBSERVE_TWICE,
                        "after the same turns were observed again, the prompt changed",
                        where,
                    )
        finally:
            deps.close()


def _observe_as_the_app_does(
    checker: _Checker, strategy: MemoryStrategy, cid: int, scenario: _Scenario
) -> None:
    """After each answer, every stored turn; the last call may end with a question whose
    answer failed (an odd number of turns)."""
    turns = scenario.turns
    ends = [*range(2, len(turns) + 1, 2)]
    if not ends or ends[-1] != len(turns):
        ends.append(len(turns))
    for end in ends:
        _observe(checker, strategy, cid, turns[:end], scenario.describe())


def _observe(
    checker: _Checker, strategy: MemoryStrategy, cid: int, turns: Sequence[Turn], where: str
) -> None:
    try:
        strategy.observe(cid, tuple(turns))
    except Exception as exc:
        raise AssertionError(
            f"{checker.name}: observe raised {exc!r} given the first {len(turns)} turns [{where}]"
        ) from exc


__all__ = [
    "BUDGETS",
    "QUESTION",
    "SYSTEM",
    "Rule",
    "RuleBroken",
    "check_strategy",
    "conversation",
    "fake_deps",
]
