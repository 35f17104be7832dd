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


def visibility_filter(user_id: int, groups: Iterable[int]) -> dict[str, object]:
    """Rows the user owns, public rows, and rows shared with one of the user's groups."""
    either: list[dict[str, object]] = [{"owner": user_id}, {"public": True}]
    either += [{f"g{g}": True} for g in sorted(set(groups))]
    return {"$or": either}


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
        self, query: str, *, user_id: int, groups: Iterable[int], n: int
    ) -> list[tuple[int, int, float]]:
        """(document id, chunk index, cosine) of the best `n` chunks the user may see."""
        vector = self._embedder.embed([query])[0]
        hits = self._store.query(COLLECTION, vector, n, where=visibility_filter(user_id, groups))
        found: list[tuple[int, int, float]] = []
        for row_id, score in hits:
            document, _, index = row_id.partition(":")
            found.append((int(document), int(index), score))
        return found


__all__ = ["COLLECTION", "Access", "DocumentIndex", "visibility_filter"]
