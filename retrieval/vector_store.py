"""Named collections of embeddings, kept in Chroma. Nothing Chroma-specific leaks out.

Callers hand in their own vectors (Chroma never embeds anything here), and get back
plain numpy arrays and (id, cosine similarity) pairs. The Chroma client is made on
first use, so building a `VectorStore` costs nothing and never touches the network.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MetadataValue = str | int | float | bool


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


_PERSISTENT: dict[str, Any] = {}
_PERSISTENT_LOCK = threading.Lock()


def forget_clients() -> None:
    """Close every embedded Chroma client of this process (tests: each test's folder
    would otherwise keep its files open until the process ends)."""
    with _PERSISTENT_LOCK:
        clients = list(_PERSISTENT.values())
        _PERSISTENT.clear()
    for client in clients:
        close = getattr(client, "close", None)
        if close is not None:
            close()


class VectorStore:
    """Upsert, fetch and search embeddings in cosine-space collections."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        """`connect` makes the Chroma client; prefer `persistent()` or `http()`."""
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def persistent(cls, path: Path) -> VectorStore:
        """A store in a local directory (created if missing)."""

        def connect() -> Any:
            import chromadb

            # One client per folder and process, made under one lock: Chroma's own cache of
            # systems per path is not safe when two threads open the same folder at once.
            key = str(path.resolve())
            with _PERSISTENT_LOCK:
                if key not in _PERSISTENT:
                    path.mkdir(parents=True, exist_ok=True)
                    _PERSISTENT[key] = chromadb.PersistentClient(path=key, settings=_settings())
                return _PERSISTENT[key]

        return cls(connect)

    @classmethod
    def http(cls, host: str, port: int, *, ssl: bool = False) -> VectorStore:
        """A store on a Chroma server (over TLS when `ssl`); connects on first use."""

        def connect() -> Any:
            import chromadb

            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings())

        return cls(connect)

    def _chroma(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _existing(self, collection: str) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            return self._chroma().get_collection(collection, embedding_function=None)
        except NotFoundError:
            return None

    def add(
        self,
        collection: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[Mapping[str, MetadataValue]],
    ) -> None:
        """Insert or replace rows (ids, embeddings, metadata; no text is stored); the
        collection is created (cosine space) if missing."""
        if not len(ids) == len(embeddings) == len(metadatas):
            raise ValueError("ids, embeddings and metadatas differ in length")
        if not ids:
            return
        client = self._chroma()
        target = client.get_or_create_collection(
            collection, metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        vectors = np.asarray(embeddings, dtype=np.float32)
        step = int(client.get_max_batch_size())
        for start in range(0, len(ids), step):
            stop = start + step
            target.upsert(
                ids=list(ids[start:stop]),
                embeddings=vectors[start:stop],
                metadatas=[dict(m) for m in metadatas[start:stop]],
            )

    def get(self, collection: str, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Embeddings by id: all of them, or those of `ids` that exist. No collection: {}."""
        if ids is not None and not ids:
            return {}
        target = self._existing(collection)
        if target is None:
            return {}
        found = target.get(ids=None if ids is None else list(ids), include=["embeddings"])
        rows = found["embeddings"]
        if rows is None or len(rows) == 0:
            return {}
        matrix = np.asarray(rows, dtype=np.float32)
        return {str(row_id): matrix[i] for i, row_id in enumerate(found["ids"])}

    def get_where(self, collection: str, where: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Embeddings by id of the rows a metadata filter selects (none: {})."""
        target = self._existing(collection)
        if target is None:
            return {}
        found = target.get(where=dict(where), include=["embeddings"])
        rows = found["embeddings"]
        if rows is None or len(rows) == 0:
            return {}
        matrix = np.asarray(rows, dtype=np.float32)
        return {str(row_id): matrix[i] for i, row_id in enumerate(found["ids"])}

    def rows(self, collection: str) -> dict[str, tuple[np.ndarray, dict[str, MetadataValue]]]:
        """Every row's embedding and metadata by id (no collection: {})."""
        target = self._existing(collection)
        if target is None:
            return {}
        found = target.get(include=["embeddings", "metadatas"])
        vectors = found["embeddings"]
        if vectors is None or len(vectors) == 0:
            return {}
        matrix = np.asarray(vectors, dtype=np.float32)
        return {
            str(row_id): (matrix[i], dict(found["metadatas"][i] or {}))
            for i, row_id in enumerate(found["ids"])
        }

    def query(
        self,
        collection: str,
        embedding: np.ndarray,
        n: int,
        where: Mapping[str, object] | None = None,
    ) -> list[tuple[str, float]]:
        """The `n` nearest rows as (id, cosine similarity), best first.

        `where` is a Chroma metadata filter (`{"session": "Session 2"}`, `{"$and": [...]}`)
        applied inside the search, so rows it excludes are never returned nor counted.
        """
        if n <= 0:
            return []
        target = self._existing(collection)
        if target is None:
            return []
        found = target.query(
            query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1),
            n_results=n,
            where=dict(where) if where else None,
            include=["distances"],
        )
        ids = found["ids"][0]
        distances = found["distances"][0]
        return [(str(i), 1.0 - float(d)) for i, d in zip(ids, distances, strict=True)]

    def delete_where(self, collection: str, where: Mapping[str, object]) -> None:
        """Delete the rows a metadata filter selects (nothing if the collection is missing)."""
        target = self._existing(collection)
        if target is not None:
            target.delete(where=dict(where))

    def set_metadata(
        self, collection: str, where: Mapping[str, object], metadata: Mapping[str, MetadataValue]
    ) -> int:
        """Replace the metadata of every row a filter selects; how many rows changed."""
        target = self._existing(collection)
        if target is None:
            return 0
        ids = target.get(where=dict(where), include=[])["ids"]
        if ids:
            target.update(ids=list(ids), metadatas=[dict(metadata) for _ in ids])
        return len(ids)

    def names(self) -> list[str]:
        """The names of every collection in the store."""
        return sorted(str(getattr(c, "name", c)) for c in self._chroma().list_collections())

    def delete_collection(self, collection: str) -> None:
        """Drop a collection and its rows; nothing happens if it does not exist."""
        from chromadb.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            self._chroma().delete_collection(collection)
