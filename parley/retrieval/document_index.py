"""Document chunks' vectors in Chroma, kept apart by who may see them.

Each chunk's row (`"<document id>:<chunk index>"`: its embedding and metadata
`document_id`, `owner`, `public`, one `g<group id>: True` key per group it is shared
with) is written to one collection per *scope* that may see it: its owner's
(`documents-u<id>`), each group's it is shared with (`documents-g<id>`), and
`documents-public` when public. A search queries only the scopes of the asking user
(their own, their groups', the public one), so rows they may not see are never scored
or returned; the service checks each hit against the database's access list again
before showing it. Scoped collections keep the search as fast as an unfiltered one: a
metadata filter over one shared collection of 100,000 chunks cost Chroma about 90 ms
a query (`parley/bench/documents.py`), a query of a scope about 2 ms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from parley.core.errors import ParleyError, StorageUnavailable
from parley.retrieval.embeddings import Embedder
from parley.retrieval.lexical import BM25Index
from parley.retrieval.scoring import ScoringWeights, fuse_coded
from parley.retrieval.vector_store import MetadataValue, VectorStore

LEGACY_COLLECTION = "documents"  # one shared, filtered collection (before scopes)
PUBLIC_SCOPE = "documents-public"


def user_scope(user_id: int) -> str:
    return f"documents-u{user_id}"


def group_scope(group_id: int) -> str:
    return f"documents-g{group_id}"


@dataclass(frozen=True, slots=True)
class Allowed:
    """Why a user may see a document: they own it, it is public, or it is shared with
    these of their groups (ids)."""

    reason: Literal["owner", "public", "group"]
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentAccess:
    """Who may see a document. `allowed` is the one rule (the service's checks, listing,
    opening a chunk and the check of every search candidate use it); `scopes` are the
    vector collections that carry the same rule into Chroma: a document's scopes meet
    a user's `visible_scopes` exactly when `allowed` says yes (a test holds them to it)."""

    owner: int
    public: bool
    groups: frozenset[int]

    def allowed(self, user_id: int, user_groups: Iterable[int]) -> Allowed | None:
        if self.owner == user_id:
            return Allowed("owner")
        if self.public:
            return Allowed("public")
        shared = self.groups & set(user_groups)
        return Allowed("group", tuple(sorted(shared))) if shared else None

    def metadata(self, document_id: int) -> dict[str, MetadataValue]:
        tags: dict[str, MetadataValue] = {f"g{g}": True for g in sorted(self.groups)}
        return {"document_id": document_id, "owner": self.owner, "public": self.public, **tags}

    @property
    def scopes(self) -> list[str]:
        """The collections a document with this access is written to (the owner's first)."""
        found = [user_scope(self.owner), *(group_scope(g) for g in sorted(self.groups))]
        return [*found, PUBLIC_SCOPE] if self.public else found


# Chunks are ranked like turns: BM25 and cosine fused, a chunk lifted by a relevant
# neighbour in its document. The session and speaker terms have no meaning here.
CHUNK_WEIGHTS = ScoringWeights(cosine=1.5, neighbour=0.3, session=0.0, speaker=0.0)


def visible_scopes(user_id: int, groups: Iterable[int]) -> list[str]:
    """The collections a user's search reads: their own, their groups', the public one."""
    return [user_scope(user_id), *(group_scope(g) for g in sorted(set(groups))), PUBLIC_SCOPE]


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

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with _store_errors():
            return self._embedder.embed(texts)

    def add(self, document_id: int, vectors: np.ndarray, access: DocumentAccess) -> None:
        """Index a document's chunks (row i is chunk i) in every scope that may see it."""
        self.add_many([(document_id, vectors, access)])

    def add_many(self, documents: Sequence[tuple[int, np.ndarray, DocumentAccess]]) -> None:
        """Index several documents' chunks, one write per scope (bulk loads)."""
        rows: dict[str, tuple[list[str], list[np.ndarray], list[dict[str, MetadataValue]]]] = {}
        for document_id, vectors, access in documents:
            ids = [f"{document_id}:{i}" for i in range(len(vectors))]
            metadata = access.metadata(document_id)
            for scope in access.scopes:
                scope_ids, scope_vectors, metadatas = rows.setdefault(scope, ([], [], []))
                scope_ids += ids
                scope_vectors.append(np.asarray(vectors, dtype=np.float32))
                metadatas += [metadata] * len(ids)
        with _store_errors():
            for scope, (ids, vectors_list, metadatas) in rows.items():
                if ids:
                    matrix = np.concatenate(vectors_list)
                    self._store.add(scope, ids=ids, embeddings=matrix, metadatas=metadatas)

    def sync(
        self, document_id: int, access: DocumentAccess | None, stale: Iterable[str]
    ) -> list[str]:
        """Bring a document's rows in line with its access (None: deleted): dropped from
        `stale` scopes first (a revocation takes effect before anything else), re-tagged
        where they are, copied where they are missing. Idempotent: safe to repeat after
        a failure part-way. The scopes it dropped rows from (their bytes stay in the
        store's files until `purge`)."""
        where = {"document_id": document_id}
        wanted = access.scopes if access is not None else []
        with _store_errors():
            dropped = sorted(
                scope
                for scope in {*stale, LEGACY_COLLECTION} - set(wanted)
                if self._store.delete_where(scope, where)
            )
            if access is None:
                return dropped
            metadata = access.metadata(document_id)
            missing = [s for s in wanted if self._store.set_metadata(s, where, metadata) == 0]
            if not missing:
                return dropped
            rows: dict[str, np.ndarray] = {}
            for source in [*wanted, LEGACY_COLLECTION]:
                rows = rows or self._store.get_where(source, where)
            ids = sorted(rows, key=lambda row_id: int(row_id.partition(":")[2]))
            if not ids:
                return dropped  # nothing indexed to copy (a failed upload): nothing to show
            matrix = np.stack([rows[i] for i in ids])
            for scope in missing:
                self._store.add(scope, ids=ids, embeddings=matrix, metadatas=[metadata] * len(ids))
        return dropped

    def remove(self, document_id: int, scopes: Iterable[str]) -> None:
        """Drop a document's rows from `scopes`."""
        with _store_errors():
            for scope in scopes:
                self._store.delete_where(scope, {"document_id": document_id})

    def purge(self, scopes: Iterable[str]) -> None:
        """Leave no byte of rows dropped from `scopes` in the store's files (each scope is
        rebuilt from its remaining rows, then the files are vacuumed)."""
        with _store_errors():
            self._store.purge(scopes)

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
        (of `documents` only, when given), from the user's scopes alone."""
        with _store_errors():
            return self._search(query, user_id, groups, n, documents)

    def _search(
        self,
        query: str,
        user_id: int,
        groups: Iterable[int],
        n: int,
        documents: Iterable[int] | None,
    ) -> list[tuple[int, int, float]]:
        vector = self._embedder.embed([query])[0]
        where = None
        if documents is not None:
            where = {"document_id": {"$in": sorted(set(documents))}}
        best: dict[str, float] = {}
        for scope in visible_scopes(user_id, groups):
            for row_id, score in self._store.query(scope, vector, n, where=where):
                best[row_id] = max(score, best.get(row_id, score))
        found: list[tuple[int, int, float]] = []
        for row_id, score in sorted(best.items(), key=lambda item: -item[1])[:n]:
            document, _, index = row_id.partition(":")
            found.append((int(document), int(index), score))
        return found

    def migrate_legacy(self, access_of: Callable[[int], DocumentAccess | None]) -> int:
        """Move the rows of the one shared collection of earlier versions into the scopes
        of each document's access *as the database has it now* (`access_of`; None: the
        document is gone and its rows are dropped), then drop that collection. How many
        rows were found (0: nothing to move)."""
        with _store_errors():
            rows = self._store.rows(LEGACY_COLLECTION)
            by_document: dict[int, list[tuple[int, np.ndarray]]] = {}
            for row_id, (vector, _) in rows.items():
                document, _, index = row_id.partition(":")
                by_document.setdefault(int(document), []).append((int(index), vector))
            batch: list[tuple[int, np.ndarray, DocumentAccess]] = []
            for document_id, chunks in by_document.items():
                access = access_of(document_id)
                if access is not None:
                    chunks.sort(key=lambda chunk: chunk[0])
                    batch.append((document_id, np.stack([c[1] for c in chunks]), access))
            self.add_many(batch)
            if rows:
                self._store.delete_collection(LEGACY_COLLECTION)
        return len(rows)


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Whatever the vector store or the embedder raises becomes `StorageUnavailable`,
    with a sentence (the original is logged by whoever handles it)."""
    try:
        yield
    except ParleyError:
        raise
    except Exception as exc:
        raise StorageUnavailable(
            f"document index: {type(exc).__name__}: {exc}",
            user_message="The document index is not answering. Please try again shortly.",
        ) from exc


__all__ = [
    "LEGACY_COLLECTION",
    "PUBLIC_SCOPE",
    "Allowed",
    "Candidate",
    "DocumentAccess",
    "DocumentIndex",
    "group_scope",
    "hybrid_rank",
    "user_scope",
    "visible_scopes",
]
