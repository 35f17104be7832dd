"""`token_window`: the newest turns that fit, never over budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.core.errors import InvalidInput
from parley.memory.base import ContextRequest, ContextWindow, Turn
from parley.memory.token_window import TokenWindow


def conversation(lengths: list[int]) -> list[Turn]:
    return [
        Turn(id=i, role="user" if i % 2 == 0 else "assistant", content="word " * n)
        for i, n in enumerate(lengths)
    ]


def build(history: list[Turn], question: str, budget: int, system: str = "sys") -> ContextWindow:
    return TokenWindow().build(
        ContextRequest(
            conversation_id=1, system=system, history=history, question=question, budget=budget
        )
    )


def test_keeps_the_newest_turns_that_fit() -> None:
    window = build(conversation([50, 50, 50, 50, 10, 10]), "q?", 100)
    assert window.turn_ids == (4, 5)
    assert window.messages[-1].content == "q?"
    assert window.total_tokens <= 100
    assert window.strategy == "token_window"


def test_prompt_starts_with_a_user_turn() -> None:
    window = build(conversation([10, 10, 10]), "q", 38, system="")
    assert window.messages[0].role == "user"


def test_question_alone_over_budget_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        build([], "word " * 500, 100, system="")


@given(lengths=st.lists(st.integers(0, 200), max_size=40), budget=st.integers(60, 3000))
def test_never_exceeds_the_budget(lengths: list[int], budget: int) -> None:
    window = build(conversation(lengths), "What now?", budget, system="You are helpful.")
    assert window.total_tokens <= budget
    if window.turn_ids:  # a contiguous run that ends with the newest turn
        assert window.turn_ids == tuple(range(window.turn_ids[0], len(lengths)))
