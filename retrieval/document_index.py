"""Document chunks' vectors in one Chroma collection, each tagged with who may see it.

Each row is one chunk (`"<document id>:<chunk index>"`): its embedding and metadata
`document_id`, `owner`, `public`, and one `g<group id>: True` key per group it is
shared with. `search` filters inside the Chroma query by the principal's id and
groups, so rows they may not see are never scored or returned; the service checks
each hit against the database's access list again before showing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.embeddings import Embedder
from retrieval.lexical import BM25Index
from retrieval.scoring import ScoringWeights, fuse_coded
from retrieval.vector_store import MetadataValue, VectorStore

COLLECTION = "documents"


@dataclass(frozen=True, slots=True)
class Access:
    owner: int
    public: bool
    groups: frozenset[int]

    def metadata(self, document_id: int) -> dict[str, MetadataValue]:
        tags: dict[str, MetadataValue] = {f"g{g}": True for g in sorted(self.groups)}
        return {"document_id": document_id, "owner": self.owner, "public": self.public, **tags}


# Chunks are ranked like turns: BM25 and cosine fused, a chunk lifted by a relevant
# neighbour in its document. The session and speaker terms have no meaning here.
CHUNK_WEIGHTS = ScoringWeights(cosine=1.5, neighbour=0.3, session=0.0, speaker=0.0)


def visibility_filter(
    user_id: int, groups: Iterable[int], documents: Iterable[int] | None = None
) -> dict[str, object]:
    """Rows the user owns, public rows, and rows shared with one of the user's groups;
    with `documents`, only rows of those documents."""
    either: list[dict[str, object]] = [{"owner": user_id}, {"public": True}]
    either += [{f"g{g}": True} for g in sorted(set(groups))]
    visible: dict[str, object] = {"$or": either}
    if documents is None:
        return visible
    chosen = sorted(set(documents))
    return {"$and": [visible, {"document_id": {"$in": chosen}}]}


@dataclass(frozen=True, slots=True)
class Candidate:
    document_id: int
    index: int
    cosine: float
    text: str


def hybrid_rank(question: str, candidates: Sequence[Candidate]) -> list[tuple[Candidate, float]]:
    """Candidates with their fused relevance (BM25 over the candidates and cosine, a
    chunk lifted by a relevant next or previous chunk of its document), best first."""
    if not candidates:
        return []
    ordered = sorted(candidates, key=lambda c: (c.document_id, c.index))
    lexical = BM25Index()
    for candidate in ordered:
        lexical.add(candidate.text)
    # A run of consecutive chunks shares a code: neighbours only within a run.
    runs = np.zeros(len(ordered), dtype=np.intp)
    for i in range(1, len(ordered)):
        previous, current = ordered[i - 1], ordered[i]
        adjacent = (
            current.document_id == previous.document_id and current.index == previous.index + 1
        )
        runs[i] = runs[i - 1] if adjacent else runs[i - 1] + 1
    fused = fuse_coded(
        lexical=lexical.scores(question),
        cosine=np.array([c.cosine for c in ordered]),
        session_codes=runs,
        speaker_codes=np.full(len(ordered), -1, dtype=np.intp),
        speaker=None,
        weights=CHUNK_WEIGHTS,
    )
    ranked = sorted(zip(ordered, fused.tolist(), strict=True), key=lambda p: -p[1])
    return ranked


class DocumentIndex:
    def __init__(self, *, embedder: Embedder, store: VectorStore) -> None:
        self._embedder = embedder
        self._store = store

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embedder.embed(texts)

    def add(self, document_id: int, vectors: np.ndarray, access: Access) -> None:
        """Index a document's chunks (row i is chunk i)."""
        self._store.add(
            COLLECTION,
            ids=[f"{document_id}:{i}" for i in range(len(vectors))],
            embeddings=vectors,
            metadatas=[access.metadata(document_id)] * len(vectors),
        )

    def set_access(self, document_id: int, access: Access) -> None:
        self._store.set_metadata(
            COLLECTION, {"document_id": document_id}, access.metadata(document_id)
        )

    def remove(self, document_id: int) -> None:
        self._store.delete_where(COLLECTION, {"document_id": document_id})

    def search(
        self,
        query: str,
        *,
        user_id: int,
        groups: Iterable[int],
        n: int,
        documents: Iterable[int] | None = None,
    ) -> list[tuple[int, int, float]]:
        """(document id, chunk index, cosine) of the best `n` chunks the user may see
        (of `documents` only, when given)."""
        vector = self._embedder.embed([query])[0]
        where = visibility_filter(user_id, groups, documents)
        hits = self._store.query(COLLECTION, vector, n, where=where)
        found: list[tuple[int, int, float]] = []
        for row_id, score in hits:
            document, _, index = row_id.partition(":")
            found.append((int(document), int(index), score))
        return found


__all__ = [
    "COLLECTION",
    "Access",
    "Candidate",
    "DocumentIndex",
    "hybrid_rank",
    "visibility_filter",
]
