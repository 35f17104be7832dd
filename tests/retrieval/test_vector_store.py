"""parley/retrieval/vector_store.py: the Chroma-backed store of ids, embeddings and metadata."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from parley.retrieval.vector_store import VectorStore, deferred_purges


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose raw bytes contain `needle`."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def files_holding_vectors(root: Path, vectors: Sequence[np.ndarray]) -> list[str]:
    """Every file under `root` holding one of `vectors` as float32 values (within 1e-6, at
    any byte offset): byte for byte as they were sent (Chroma's write-ahead queue, and
    cells SQLite freed without zeroing), or as hnswlib keeps them, normalised once more
    (the index files' `data_level0.bin`)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(_holds(data, v) for v in vectors):
            found.append(str(path.relative_to(root)))
    return found


def _holds(data: bytes, vector: np.ndarray) -> bool:
    vector = np.asarray(vector, dtype=np.float32)
    anchor = int(np.argmax(np.abs(vector)))  # a distinctive value: few places match it
    for offset in range(min(4, len(data))):
        values = np.frombuffer(data, dtype="<f4", offset=offset, count=(len(data) - offset) // 4)
        with np.errstate(all="ignore"):  # the bytes of other things read as floats
            starts = np.flatnonzero(np.abs(values - vector[anchor]) <= 1e-6) - anchor
            for start in starts[(starts >= 0) & (starts + len(vector) <= len(values))]:
                if np.allclose(values[start : start + len(vector)], vector, rtol=0, atol=1e-6):
                    return True
    return False


def units(rng: np.random.Generator, n: int, dimension: int = 32) -> np.ndarray:
    vectors = rng.standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


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


def test_purge_leaves_no_byte_of_deleted_rows_and_keeps_the_others(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    store = VectorStore.persistent(folder)
    rng = np.random.default_rng(3)
    doomed, gone, kept = units(rng, 3), units(rng, 2), units(rng, 2000)
    # The doomed rows first: the 2,000 after them make Chroma write its HNSW index files.
    doomed_ids = [f"DOOMED-ROW-{i}" for i in range(3)]
    store.add("documents-u1", doomed_ids, doomed, [{"document_id": -7, "note": "PLUM-ORCHID"}] * 3)
    kept_ids = [f"{i // 10}:{i % 10}" for i in range(2000)]
    kept_meta: list[dict[str, str | int | float | bool]] = [
        {"document_id": i // 10, "public": i % 2 == 0, "g3": True, "share": 0.5}
        for i in range(2000)
    ]
    store.add("documents-u1", kept_ids, kept, kept_meta)
    store.add("conversation-9", ["1", "2"], gone, [{"speaker": "WALNUT-GROVE"}] * 2)
    needles = [b"DOOMED-ROW-1", b"PLUM-ORCHID", b"WALNUT-GROVE"]

    assert store.delete_where("documents-u1", {"document_id": -7}) == 3
    store.delete_collection("conversation-9")
    # Deleted through Chroma's API, yet still in its files: what purge is for.
    assert any(files_holding_vectors(folder, [v]) for v in [*doomed, *gone])
    assert all(files_holding(folder, needle) for needle in needles)

    store.purge(["documents-u1", "conversation-9"])

    assert files_holding_vectors(folder, [*doomed, *gone]) == []
    assert [files_holding(folder, needle) for needle in needles] == [[], [], []]
    rows = store.rows("documents-u1")
    assert sorted(rows) == sorted(kept_ids)
    assert [rows[i][1] for i in kept_ids] == kept_meta  # metadata unchanged, bools included
    np.testing.assert_allclose(np.stack([rows[i][0] for i in kept_ids]), kept, atol=1e-6)
    assert files_holding_vectors(folder, kept[:1])  # the survivors are in the files
    hits = store.query("documents-u1", kept[1234], 2)
    assert hits[0][0] == kept_ids[1234] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert store.names() == ["documents-u1"]
    # One segment folder left: the rebuilt collection's (the old one's and the dropped
    # collection's are gone).
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1
    store.purge(["documents-u1", "conversation-9"])  # again: nothing changes
    assert sorted(store.rows("documents-u1")) == sorted(kept_ids)


def test_purge_lets_searches_go_on_and_holds_writes_back(tmp_path: Path) -> None:
    """Searches during a purge always find their row (never a collection swapped or
    dropped under them), and rows written meanwhile are not lost with the old copy."""
    store = VectorStore.persistent(tmp_path / "chroma")
    rng = np.random.default_rng(5)
    vectors = units(rng, 1500)
    ids = [f"{i // 10}:{i % 10}" for i in range(1500)]
    store.add("documents-public", ids, vectors, [{"document_id": i // 10} for i in range(1500)])
    store.delete_where("documents-public", {"document_id": 3})
    done = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def search() -> None:
        try:
            while not done.is_set():
                assert store.query("documents-public", vectors[700], 1)[0][0] == ids[700]
                searches[0] += 1
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    late = units(rng, 40)

    def write() -> None:
        try:
            for i in range(40):
                store.add(
                    "documents-public", [f"late:{i}"], late[i : i + 1], [{"document_id": 999}]
                )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=search) for _ in range(2)]
    workers.append(threading.Thread(target=write))
    for worker in workers:
        worker.start()
    store.purge(["documents-public"])
    workers[-1].join(30)
    done.set()
    for worker in workers:
        worker.join(30)
    assert errors == [] and searches[0] > 0
    found = store.get("documents-public")
    assert len(found) == 1490 + 40 and {f"late:{i}" for i in range(40)} <= set(found)


def test_a_purge_cut_short_is_undone_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chromadb.api.models.Collection import Collection

    store = VectorStore.persistent(tmp_path / "chroma")
    store.add("documents-u2", ["a", "b"], np.eye(2, dtype=np.float32), [{"n": 1}, {"n": 2}])
    store.delete_where("documents-u2", {"n": 2})
    renames: list[str | None] = []
    rename = Collection.modify

    def fail_second_rename(self: Collection, name: str | None = None, **rest: object) -> None:
        renames.append(name)
        if len(renames) == 2:
            raise ConnectionError("the store went away between the two renames")
        rename(self, name=name, **rest)  # type: ignore[arg-type]

    monkeypatch.setattr(Collection, "modify", fail_second_rename)
    with pytest.raises(ConnectionError):
        store.purge(["documents-u2"])
    monkeypatch.undo()
    assert renames == ["documents-u2.retired", "documents-u2"]
    assert store.get("documents-u2") == {}  # the original is parked under another name
    store.purge(["documents-u2"])
    assert set(store.get("documents-u2")) == {"a"} and store.names() == ["documents-u2"]


def test_deferred_purges_reclaim_the_files_once_for_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "chroma"
    store = VectorStore.persistent(folder)
    vectors = units(np.random.default_rng(9), 3)
    reclaims: list[int] = []
    reclaim = VectorStore._reclaim_files

    def counted(self: VectorStore) -> None:
        reclaims.append(1)
        reclaim(self)

    monkeypatch.setattr(VectorStore, "_reclaim_files", counted)
    with deferred_purges():
        for i in range(3):
            store.add(f"conversation-{i}", ["1"], vectors[i : i + 1], [{"turn_id": 1}])
            store.delete_collection(f"conversation-{i}")
            store.purge([f"conversation-{i}"])
        assert reclaims == []  # noted, not done yet
    assert reclaims == [1]
    assert files_holding_vectors(folder, vectors) == []


def test_a_servers_files_are_not_purged_from_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**settings: object) -> None:
        raise AssertionError(f"purge connected to the server: {settings}")

    monkeypatch.setattr("chromadb.HttpClient", refuse)
    VectorStore.http("127.0.0.1", 1).purge(["documents-u1"])  # nothing to do, no connection
