"""`parley.memory.testing`: every built-in passes `check_strategy`, and each rule catches
a strategy that breaks it (and names it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import pytest
from pydantic import BaseModel, ConfigDict, Field

from parley.core.llm import PromptMessage, SearchSource
from parley.memory import (
    ContextRequest,
    ContextWindow,
    InvalidInput,
    MemoryDeps,
    MemoryStrategy,
    Summary,
    Turn,
    assemble,
    available,
    count_tokens,
    message_tokens,
    newest_that_fit,
    summary_tokens,
    too_long,
)
from parley.memory.testing import QUESTION, SYSTEM, Rule, RuleBroken, check_strategy, fake_deps

BUILT_INS = ("full", "window", "token_window", "summary_buffer", "vector_recall", "hybrid")


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_follows_the_rules(name: str) -> None:
    check_strategy(available()[name])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("window", {"turns": 1}),
        ("summary_buffer", {"fold_tokens": 200, "summary_tokens": 60}),
        ("hybrid", {"fold_tokens": 200, "summary_tokens": 60, "recent_turns": 0}),
        ("hybrid", {"summary_share": 0.5, "recent_share": 1.0, "recall_turns": 3}),
        ("vector_recall", {"recent_turns": 0, "recall_turns": 1}),
    ],
)
def test_the_built_ins_follow_the_rules_with_other_options(
    name: str, options: dict[str, object]
) -> None:
    check_strategy(available()[name], options=options)


# --- strategies that each break one rule ------------------------------------------------


class Newest:
    """A correct strategy (the newest turns that fit) for the broken ones to start from."""

    name = "newest"

    def __init__(self, deps: MemoryDeps | None = None) -> None:
        del deps

    def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
        del conversation_id, turns

    def build(self, request: ContextRequest) -> ContextWindow:
        room = request.budget - count_tokens(request.system) - message_tokens(request.question)
        if room < 0:
            raise too_long()
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=None,
            window=newest_that_fit(request.history, room),
            recalled=(),
            question=request.question,
            budget=request.budget,
        )


def tampered(change: Callable[[ContextWindow, ContextRequest], ContextWindow]) -> type[Newest]:
    class Tampered(Newest):
        def build(self, request: ContextRequest) -> ContextWindow:
            return change(super().build(request), request)

    return Tampered


class EverythingAndLies(Newest):
    """Puts the whole history in and reports the tokens `assemble` would have allowed."""

    def build(self, request: ContextRequest) -> ContextWindow:
        reported = super().build(request)  # refuses when even the question cannot fit
        turns = list(request.history)
        while turns and turns[0].role != "user":
            turns.pop(0)
        return dataclasses.replace(
            reported,
            messages=(
                *(PromptMessage(t.role, t.content) for t in turns),
                PromptMessage("user", request.question),
            ),
            turn_ids=tuple(t.id for t in turns),
        )


class FoldsPerCall(Newest):
    """Folds one more turn into its summary each time `observe` is called, as if every
    call meant a new answer."""

    def __init__(self, deps: MemoryDeps | None = None) -> None:
        super().__init__(deps)
        self._folded: dict[int, int] = {}

    def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
        folded = self._folded.get(conversation_id, 0)
        self._folded[conversation_id] = min(folded + 1, len(turns))

    def build(self, request: ContextRequest) -> ContextWindow:
        folded = min(self._folded.get(request.conversation_id, 0), len(request.history))
        summary = (
            Summary(
                conversation_id=request.conversation_id,
                version=folded,
                first_turn_id=request.history[0].id,
                last_turn_id=request.history[folded - 1].id,
                text=f"{folded} earlier turns were about sailing.",
                method="extractive",
            )
            if folded
            else None
        )
        room = (
            request.budget
            - count_tokens(request.system)
            - summary_tokens(summary)
            - message_tokens(request.question)
        )
        if room < 0:
            raise too_long()
        return assemble(
            strategy=self.name,
            system_prompt=request.system,
            summary=summary,
            window=newest_that_fit(request.history[folded:], room),
            recalled=(),
            question=request.question,
            budget=request.budget,
        )


class NeedsAHistory(Newest):
    def build(self, request: ContextRequest) -> ContextWindow:
        request.history[-1]  # noqa: B018 - the bug: an empty history raises IndexError
        return super().build(request)


class RefusesAnEmptyHistory(Newest):
    def build(self, request: ContextRequest) -> ContextWindow:
        if not request.history:
            raise InvalidInput("Say something first.")
        return super().build(request)


class RefusesWithAValueError(Newest):
    def build(self, request: ContextRequest) -> ContextWindow:
        if count_tokens(request.system) + message_tokens(request.question) > request.budget:
            raise ValueError("budget too small")
        return super().build(request)


def claims(ids: Callable[[ContextWindow, ContextRequest], tuple[int, ...]]) -> type[Newest]:
    return tampered(lambda c, r: dataclasses.replace(c, turn_ids=ids(c, r)))


BROKEN: list[tuple[str, Callable[[MemoryDeps], MemoryStrategy], Rule, str]] = [
    ("over budget", EverythingAndLies, Rule.BUDGET, "counts"),
    (
        "a line added to the system prompt",
        tampered(lambda c, _: dataclasses.replace(c, system=c.system + "\nAlways agree.")),
        Rule.SYSTEM,
        "system prompt became",
    ),
    (
        "an assistant message after the question",
        tampered(
            lambda c, _: dataclasses.replace(
                c, messages=(*c.messages, PromptMessage("assistant", "Certainly."))
            )
        ),
        Rule.QUESTION,
        "assistant's",
    ),
    (
        "the question reworded",
        tampered(
            lambda c, r: dataclasses.replace(
                c, messages=(*c.messages[:-1], PromptMessage("user", r.question.lower()))
            )
        ),
        Rule.QUESTION,
        "ends",
    ),
    (
        "an assistant greeting first",
        tampered(
            lambda c, _: dataclasses.replace(
                c, messages=(PromptMessage("assistant", "Hello!"), *c.messages)
            )
        ),
        Rule.USER_FIRST,
        "first message",
    ),
    (
        "every turn claimed",
        claims(lambda _, r: tuple(t.id for t in r.history)),
        Rule.TURN_IDS,
        "not in the prompt",
    ),
    ("no turn claimed", claims(lambda _c, _r: ()), Rule.TURN_IDS, "but not in turn_ids"),
    (
        "a turn claimed that is not in the history",
        claims(lambda c, _: (*c.turn_ids, 10_000)),
        Rule.TURN_IDS,
        "not in the history",
    ),
    (
        "turns trimmed by a character and not claimed",
        tampered(
            lambda c, _: dataclasses.replace(
                c,
                turn_ids=(),
                messages=(
                    *(dataclasses.replace(m, content=m.content[:-1]) for m in c.messages[:-1]),
                    c.messages[-1],
                ),
            )
        ),
        Rule.TURN_IDS,
        "but not in turn_ids",
    ),
    (
        "the history smuggled in as sources",
        tampered(
            lambda c, r: dataclasses.replace(
                c,
                messages=(
                    *c.messages[:-1],
                    dataclasses.replace(
                        c.messages[-1],
                        sources=(
                            SearchSource("x", "history", tuple(t.content for t in r.history)),
                        ),
                    ),
                ),
            )
        ),
        Rule.NO_SOURCES,
        "carry sources",
    ),
    (
        "fractional token counts",
        tampered(
            lambda c, _: dataclasses.replace(
                c, section_tokens={k: v + 0.5 for k, v in c.section_tokens.items()}
            )
        ),
        Rule.RECORDABLE,
        "validation error",
    ),
    ("one more fold per observe", FoldsPerCall, Rule.OBSERVE_TWICE, "the prompt changed"),
    ("an IndexError on no turns", NeedsAHistory, Rule.EMPTY_HISTORY, "IndexError"),
    ("a refusal of no turns", RefusesAnEmptyHistory, Rule.EMPTY_HISTORY, "Say something first"),
    ("a ValueError for a refusal", RefusesWithAValueError, Rule.CLEAR_REFUSAL, "ValueError"),
]


def test_the_correct_strategy_the_broken_ones_start_from_passes() -> None:
    check_strategy(Newest)


@pytest.mark.parametrize(
    ("factory", "rule", "detail"),
    [pytest.param(f, r, d, id=label) for label, f, r, d in BROKEN],
)
def test_each_broken_rule_is_caught_and_named(
    factory: Callable[[MemoryDeps], MemoryStrategy], rule: Rule, detail: str
) -> None:
    with pytest.raises(RuleBroken) as caught:
        check_strategy(factory)
    assert caught.value.rule is rule
    assert isinstance(caught.value, AssertionError)  # a plain assert in anyone's tests
    message = str(caught.value)
    assert f"breaks the rule '{rule}'" in message and detail in message
    assert "budget" in caught.value.scenario or "turns" in caught.value.scenario


def test_every_rule_has_a_broken_strategy() -> None:
    assert {rule for _, _, rule, _ in BROKEN} == set(Rule)


def test_a_failing_observe_is_an_assertion_that_says_so() -> None:
    class Crashes(Newest):
        def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
            raise RuntimeError(f"index is gone ({conversation_id}, {len(turns)} turns)")

    with pytest.raises(AssertionError, match="observe raised RuntimeError"):
        check_strategy(Crashes)


# --- fake_deps --------------------------------------------------------------------------


class Counted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: int = Field(default=4, ge=1)


class WithOptions(Newest):
    name = "with_options"
    Options = Counted

    def __init__(self, deps: MemoryDeps) -> None:
        super().__init__(deps)
        self.keep = deps.options_as(Counted).keep


def test_fake_deps_builds_everything_in_memory() -> None:
    deps = fake_deps()
    saved = deps.summaries.save(
        3, text="a summary", first_turn_id=1, last_turn_id=4, method="extractive", model=None
    )
    assert saved.version == 1 and deps.summaries.latest(3) == saved
    assert deps.summaries.latest(3, up_to_turn=3) is None
    draft = deps.summarizer.summarize(3, None, [Turn(1, "user", "The ferry leaves at nine.")], 50)
    assert "ferry" in draft.text
    from parley.memory import indexed

    deps.recall.observe(3, [indexed(Turn(1, "user", "The ferry leaves at nine."))])
    deps.close()


def test_fake_deps_checks_a_strategys_options() -> None:
    assert WithOptions(fake_deps(WithOptions)).keep == 4
    assert WithOptions(fake_deps(WithOptions, keep=2)).keep == 2
    assert WithOptions(fake_deps(keep=3)).keep == 3  # checked when the strategy reads them
    with pytest.raises(InvalidInput, match="'with_options'.*keep"):
        fake_deps(WithOptions, keep=0)
    with pytest.raises(InvalidInput, match="no option 'kept'"):
        fake_deps(WithOptions, kept=2)
    with pytest.raises(InvalidInput, match="keep"):
        WithOptions(fake_deps(keep="many"))


def test_check_strategy_passes_the_options_on() -> None:
    seen: list[int] = []

    class Records(WithOptions):
        def __init__(self, deps: MemoryDeps) -> None:
            super().__init__(deps)
            seen.append(self.keep)

    check_strategy(Records, options={"keep": 7})
    assert set(seen) == {7}


def test_the_default_system_prompt_and_question_hold_no_turn_text() -> None:
    assert "Note" not in SYSTEM and "Note" not in QUESTION
