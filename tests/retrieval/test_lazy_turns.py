"""A current index scores a long history without making one entry per turn."""

from __future__ import annotations

from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.turn_recall import IndexedTurn, LazyTurns, RecallIndex

TURNS = [
    IndexedTurn(
        id=i,
        text=f"turn {i} about {'boats' if i % 7 == 0 else 'bread'}",
        speaker=None,
        session="day",
    )
    for i in range(1, 200)
]


def counted(turns: list[IndexedTurn], made: list[int]) -> LazyTurns:
    def make(position: int) -> IndexedTurn:
        made.append(position)
        return turns[position]

    return LazyTurns([t.id for t in turns], make)


def test_a_current_index_makes_no_turn_and_scores_like_the_full_list() -> None:
    index = RecallIndex(embedder=HashingEmbedder(), store=None)
    index.observe(1, TURNS)
    made: list[int] = []
    lazy = index.score(1, counted(TURNS, made), "boats", limit=10)
    assert made == []
    assert lazy == index.score(1, TURNS, "boats", limit=10)
    assert all(turn_id % 7 == 0 for turn_id, _ in lazy[:5])


def test_turns_the_index_lacks_are_made_and_indexed() -> None:
    index = RecallIndex(embedder=HashingEmbedder(), store=None)
    index.observe(1, TURNS[:150])
    made: list[int] = []
    scored = index.score(1, counted(TURNS, made), "boats")
    assert made  # the missing turns had to be made
    assert [turn_id for turn_id, _ in scored] == [t.id for t in TURNS]
    assert LazyTurns([5, 6], lambda i: TURNS[i])[-1] == TURNS[1]
