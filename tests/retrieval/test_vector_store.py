"""retrieval/vector_store.py: the Chroma-backed store of ids, embeddings and metadata."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from retrieval.vector_store import VectorStore


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    return VectorStore.persistent(tmp_path / "chroma")


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_vector_store_add_get_query_delete(store: VectorStore) -> None:
    vectors = np.stack([unit(1, 0, 0), unit(1, 1, 0), unit(0, 0, 1)])
    store.add(
        "conversation-7",
        ids=["1", "2", "3"],
        embeddings=vectors,
        metadatas=[{"session": "a", "n": 1}, {"session": "b", "n": 2}, {"session": "a", "n": 3}],
    )
    got = store.get("conversation-7")
    assert set(got) == {"1", "2", "3"}
    np.testing.assert_allclose(got["2"], vectors[1], rtol=1e-6)
    assert set(store.get("conversation-7", ["3", "99"])) == {"3"}
    assert store.get("conversation-7", []) == {}

    hits = store.query("conversation-7", unit(1, 0, 0), n=3)
    assert [i for i, _ in hits] == ["1", "2", "3"]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[1][1] == pytest.approx(math.sqrt(0.5), abs=1e-5)
    assert hits[2][1] == pytest.approx(0.0, abs=1e-5)

    # The filter runs inside the search: "2" is excluded, so "3" comes second.
    filtered = store.query("conversation-7", unit(1, 0, 0), n=2, where={"session": "a"})
    assert [i for i, _ in filtered] == ["1", "3"]
    assert [i for i, _ in store.query("conversation-7", unit(0, 0, 1), 5, {"n": {"$gte": 2}})] == [
        "3",
        "2",
    ]

    # upsert replaces
    store.add("conversation-7", ["1"], unit(0, 0, 1)[None, :], [{"session": "a"}])
    np.testing.assert_allclose(store.get("conversation-7", ["1"])["1"], unit(0, 0, 1), rtol=1e-6)

    store.delete_collection("conversation-7")
    assert store.get("conversation-7") == {}
    assert store.query("conversation-7", unit(1, 0, 0), n=3) == []
    store.delete_collection("conversation-7")  # no error the second time


def test_vector_store_missing_collection_and_bad_input(store: VectorStore) -> None:
    assert store.get("conversation-404") == {}
    assert store.get("conversation-404", ["1"]) == {}
    assert store.query("conversation-404", unit(1, 0), n=3) == []
    with pytest.raises(ValueError, match="differ in length"):
        store.add("conversation-1", ["1", "2"], np.zeros((1, 2), np.float32), [{}, {}])


def test_vector_store_survives_a_new_client(tmp_path: Path) -> None:
    VectorStore.persistent(tmp_path / "c").add(
        "conversation-1", ["5"], unit(1, 2, 3)[None, :], [{"turn_id": 5}]
    )
    again = VectorStore.persistent(tmp_path / "c").get("conversation-1")
    np.testing.assert_allclose(again["5"], unit(1, 2, 3), rtol=1e-6)


def test_http_store_connects_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[tuple[str, int, bool]] = []

    class EmptyCollection:
        def get(self, ids: list[str] | None, include: list[str]) -> dict[str, list[object]]:
            del ids, include
            return {"ids": [], "embeddings": []}

        def query(self, **request: object) -> dict[str, list[list[object]]]:
            del request
            return {"ids": [[]], "distances": [[]]}

    class Client:
        def __init__(self, *, host: str, port: int, ssl: bool, settings: object) -> None:
            del settings
            connects.append((host, port, ssl))

        def get_collection(self, name: str, embedding_function: object) -> EmptyCollection:
            del name, embedding_function
            return EmptyCollection()

    monkeypatch.setattr("chromadb.HttpClient", Client)
    store = VectorStore.http("127.0.0.1", 1, ssl=True)
    assert connects == []  # constructing touches no network
    assert store.get("conversation-1") == {}
    assert connects == [("127.0.0.1", 1, True)]  # the first use connects, as configured
    assert store.query("conversation-1", unit(1, 0), n=3) == []
    assert connects == [("127.0.0.1", 1, True)]  # and later uses reuse that client
