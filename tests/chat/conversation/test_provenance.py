"""What an answer keeps of its prompt (`provenance_of`, `ReplyStream.provenance`)."""

from __future__ import annotations

import pytest

from parley.chat.conversation.context import provenance_of
from parley.chat.conversation.replies import ReplyStream
from parley.core.errors import InvalidInput
from parley.core.llm import PromptMessage
from parley.core.records import DocumentSource
from parley.memory import ContextWindow, RecalledItem


def window(**tokens: float) -> ContextWindow:
    return ContextWindow(
        strategy="mine",
        system="You are helpful.",
        messages=(PromptMessage("user", "Hello?"),),
        turn_ids=(3, 4),
        section_tokens=tokens,  # type: ignore[arg-type]
        recalled=(RecalledItem(3, 0.123456),),
    )


def test_the_strategys_choices_and_the_passages_are_kept() -> None:
    source = DocumentSource(n=1, document_id=7, name="notes.md", allowed_as="owner")
    kept = provenance_of(window(question=5, recent=10), [source])
    assert (kept.strategy, kept.turn_ids, kept.total_tokens) == ("mine", [3, 4], 15)
    assert kept.recalled[0].score == 0.1235 and kept.sources == [source]
    assert kept.without_names().sources[0].name is None


def test_what_cannot_be_kept_is_a_sentence_not_a_traceback() -> None:
    with pytest.raises(InvalidInput, match="cannot record"):
        provenance_of(window(question=5.5))


def test_an_answer_is_kept_even_when_its_provenance_cannot_be() -> None:
    stream = ReplyStream(1, 2, 10, window(question=5.5), (), user_id=1)
    assert stream.provenance is None
    assert ReplyStream(1, 2, 10, window(question=5), (), user_id=1).provenance is not None
