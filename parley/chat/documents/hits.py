"""What a document search returns: hits (one chunk each), and passages (consecutive
chunks of one document, quoted together), grouped to fit a token allotment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley.core.tokens import count_tokens


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: int
    name: str
    owner: str
    chunk: int
    heading: str
    page: int | None
    text: str
    score: float  # cosine similarity to the query (the relevance threshold applies to it)
    why: str = ""  # the permission that let the user see it: owner, public, group NAME
    rank: float = 0.0  # the fused (BM25 and cosine) relevance the hits are ordered by
    suspect: str | None = None  # why the injection detector flagged it (None: it did not)


@dataclass(frozen=True, slots=True)
class Passage:
    """Consecutive chunks of one document, quoted together (one source to cite)."""

    hits: tuple[Hit, ...]

    @property
    def first(self) -> Hit:
        return self.hits[0]

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(h.chunk for h in self.hits)

    @property
    def suspect(self) -> str | None:
        """Why one of its chunks was flagged by the injection detector (None: none was)."""
        return next((h.suspect for h in self.hits if h.suspect), None)

    @property
    def title(self) -> str:
        """`name, page 3, Heading` (pages `3-4` when the passage runs over a page)."""
        first = self.first
        pages = sorted({h.page for h in self.hits if h.page})
        where = ""
        if pages:
            span = str(pages[0]) if len(pages) == 1 else f"{pages[0]}-{pages[-1]}"
            where = f", page {span}" if len(pages) == 1 else f", pages {span}"
        heading = f", {first.heading}" if first.heading else ""
        return f"{first.name}{where}{heading}"


# Tokens a passage's header and block framing take beside its text.
PASSAGE_OVERHEAD_TOKENS = 20


def group_passages(hits: Sequence[Hit], max_tokens: int) -> list[Passage]:
    """Relevant hits grouped into runs of consecutive chunks, best run first, as many
    as fit in `max_tokens`."""
    by_place = {(h.document_id, h.chunk): h for h in hits}
    taken: set[tuple[int, int]] = set()
    runs: list[Passage] = []
    used = 0
    for hit in hits:  # best first
        place = (hit.document_id, hit.chunk)
        if place in taken:
            continue
        run = [hit]
        for step in (-1, 1):  # relevant neighbours on either side join the run
            at = hit.chunk + step
            while (hit.document_id, at) in by_place and (hit.document_id, at) not in taken:
                neighbour = by_place[(hit.document_id, at)]
                run = [neighbour, *run] if step < 0 else [*run, neighbour]
                at += step
        cost = sum(count_tokens(h.text) for h in run) + PASSAGE_OVERHEAD_TOKENS
        while len(run) > 1 and used + cost > max_tokens:  # drop the weakest end first
            weakest = 0 if run[0].rank < run[-1].rank else -1
            run.pop(weakest)
            cost = sum(count_tokens(h.text) for h in run) + PASSAGE_OVERHEAD_TOKENS
        if hit not in run or used + cost > max_tokens:
            continue
        taken.update((h.document_id, h.chunk) for h in run)
        runs.append(Passage(tuple(run)))
        used += cost
    return runs


__all__ = ["PASSAGE_OVERHEAD_TOKENS", "Hit", "Passage", "group_passages"]
