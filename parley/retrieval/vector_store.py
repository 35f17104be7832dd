"""Named collections of embeddings, kept in Chroma. Nothing Chroma-specific leaks out.

Callers hand in their own vectors (Chroma never embeds anything here), and get back
plain numpy arrays and (id, cosine similarity) pairs. The Chroma client is made on
first use, so building a `VectorStore` costs nothing and never touches the network.

Deleting a row or a collection through Chroma's API leaves its bytes in Chroma's files
(found with chromadb 1.5): the write-ahead queue in `chroma.sqlite3` keeps every add of
a collection whose HNSW index has not yet been written (under 1,000 changes) with its
vector and metadata; SQLite frees deleted rows' cells without zeroing them (Chroma's
connections do not set `secure_delete`); hnswlib only marks a deleted vector, which stays
in the segment's `data_level0.bin`, its id in `index_metadata.pickle`; and a dropped
collection's segment folder stays on disk. `purge` removes all of that.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MetadataValue = str | int | float | bool

# A purge copies a collection into `<name>.rebuilt`, swaps the names (the old one becomes
# `<name>.retired`) and drops the old one; a crash part-way leaves these for the next purge.
REBUILT, RETIRED = ".rebuilt", ".retired"
RECLAIM_TIMEOUT_S = 600

# Run in a child process: SQLite's POSIX locks belong to the process, so a VACUUM from
# this process's own sqlite3 would not be fenced off from Chroma's connections here (it
# tore their reads: "database disk image is malformed"). The child lists the segment
# folders before it reads `segments` (a folder is made after its row), removes those of
# dropped segments, then rewrites the file without its freed pages and cells.
_RECLAIM = """
import pathlib, shutil, sqlite3, sys, uuid

def segment(path):
    try:
        return path.is_dir() and str(uuid.UUID(path.name)) == path.name
    except ValueError:
        return False

root = pathlib.Path(sys.argv[1])
folders = [p for p in root.iterdir() if segment(p)]
uri = (root / "chroma.sqlite3").as_uri() + "?mode=rw"
db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
try:
    live = {row[0] for row in db.execute("SELECT id FROM segments")}
    for folder in folders:
        if folder.name not in live:
            shutil.rmtree(folder)
    db.execute("VACUUM")
finally:
    db.close()
"""


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


class _Gate:
    """One collection's traffic in this process. Reads share it; writes take `writing`,
    one at a time; a purge holds `writing` throughout and, to swap or drop the collection,
    `closed()`, which waits for the reads in flight and holds new ones back."""

    def __init__(self) -> None:
        self.writing = threading.Lock()
        self._turn = threading.Condition()
        self._readers = 0
        self._closed = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._turn:
            self._turn.wait_for(lambda: not self._closed)
            self._readers += 1
        try:
            yield
        finally:
            with self._turn:
                self._readers -= 1
                self._turn.notify_all()

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        with self._turn:
            self._closed = True
            self._turn.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._turn:
                self._closed = False
                self._turn.notify_all()


# Gates by (store location, collection), shared by every VectorStore of one location; a
# gate nobody holds is forgotten (it has nothing to remember).
_GATES: weakref.WeakValueDictionary[tuple[str, str], _Gate] = weakref.WeakValueDictionary()
_GATES_LOCK = threading.Lock()


def _gate(location: str, collection: str) -> _Gate:
    with _GATES_LOCK:
        gate = _GATES.get((location, collection))
        if gate is None:
            gate = _GATES[(location, collection)] = _Gate()
        return gate


class _Deferred(threading.local):
    depth = 0
    stores: dict[int, tuple[VectorStore, set[str]]]

    def __init__(self) -> None:
        self.stores = {}


_DEFERRED = _Deferred()


@contextlib.contextmanager
def deferred_purges() -> Iterator[None]:
    """Within the block (in this thread), `VectorStore.purge` notes what to purge, and the
    block's end purges it all at once: one rebuild per collection and one vacuum per
    store for a batch of erasures. Raises if that purge fails (even when the block raised)."""
    _DEFERRED.depth += 1
    try:
        yield
    finally:
        _DEFERRED.depth -= 1
        if _DEFERRED.depth == 0:
            noted, _DEFERRED.stores = list(_DEFERRED.stores.values()), {}
            for store, collections in noted:
                store.purge(collections)


_SCRUBBED: list[bool] = []
M_PERTURB = -6  # glibc's mallopt parameter


def scrub_freed_memory() -> None:
    """Make glibc fill heap memory when it is freed and when it is handed out again, so
    no buffer another library writes to disk can carry bytes of freed memory.

    Seen in the erasure tests, now and then: an erased conversation's text in the
    embedded Chroma's `data_level0.bin`, which holds ids and vectors only. The likely
    way in is a buffer the index wrote to its file before filling all of it, holding
    what was freed there before (message text, say). Once per process, before the first
    embedded store opens; glibc only (elsewhere nothing happens). Costs a fill of each
    heap block as it is freed and handed out again."""
    if _SCRUBBED:
        return
    _SCRUBBED.append(True)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name and "libc.so" in name:
            ctypes.CDLL(name).mallopt(M_PERTURB, 0xA5)


class VectorStore:
    """Upsert, fetch and search embeddings in cosine-space collections, and purge what
    deletions leave in the files.

    In this process, reads of a collection never see it vanish under them while it is
    purged, and writes to it wait for the purge. Another process on the same folder (a
    `parley` command beside the app) is not held back by these locks; Chroma does not
    support writers in two processes on one folder anyway (a server is for that).

    On a Chroma server, Parley deletes through the API (the rows leave every search at
    once), but the files are the server's and its API has no maintenance call: `purge`
    does nothing there. Whoever runs the server reclaims them with it stopped, e.g. with
    `VectorStore.persistent(<its --path>).purge(<collections>)` (`chroma vacuum` frees
    pages, but not the queue of a collection whose index was never written, nor the
    folders of dropped collections).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        location: str | None = None,
        folder: Path | None = None,
    ) -> None:
        """`connect` makes the Chroma client; prefer `persistent()` or `http()`.
        `location` names the store for this process's locks; `folder` is an embedded
        store's directory (None: its files are not ours to purge)."""
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()
        self._location = location or f"store-{id(self)}"
        self._folder = folder

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
                    scrub_freed_memory()
                    path.mkdir(parents=True, exist_ok=True)
                    _PERSISTENT[key] = chromadb.PersistentClient(path=key, settings=_settings())
                return _PERSISTENT[key]

        return cls(connect, location=str(path.resolve()), folder=path)

    @classmethod
    def http(cls, host: str, port: int, *, ssl: bool = False) -> VectorStore:
        """A store on a Chroma server (over TLS when `ssl`); connects on first use."""

        def connect() -> Any:
            import chromadb

            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings())

        return cls(connect, location=f"{'https' if ssl else 'http'}://{host}:{port}")

    def _chroma(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _gate(self, collection: str) -> _Gate:
        return _gate(self._location, collection)

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
        with self._gate(collection).writing:
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
        with self._gate(collection).reading():
            target = self._existing(collection)
            if target is None:
                return {}
            found = target.get(ids=None if ids is None else list(ids), include=["embeddings"])
        return _by_id(found)

    def get_where(self, collection: str, where: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Embeddings by id of the rows a metadata filter selects (none: {})."""
        with self._gate(collection).reading():
            target = self._existing(collection)
            if target is None:
                return {}
            found = target.get(where=dict(where), include=["embeddings"])
        return _by_id(found)

    def rows(self, collection: str) -> dict[str, tuple[np.ndarray, dict[str, MetadataValue]]]:
        """Every row's embedding and metadata by id (no collection: {})."""
        with self._gate(collection).reading():
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
        with self._gate(collection).reading():
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

    def delete_where(self, collection: str, where: Mapping[str, object]) -> int:
        """Delete the rows a metadata filter selects; how many (0 if the collection is
        missing). Their bytes stay in the files until `purge`."""
        with self._gate(collection).writing:
            target = self._existing(collection)
            if target is None:
                return 0
            ids = target.get(where=dict(where), include=[])["ids"]
            if ids:
                target.delete(ids=list(ids))
        return len(ids)

    def set_metadata(
        self, collection: str, where: Mapping[str, object], metadata: Mapping[str, MetadataValue]
    ) -> int:
        """Replace the metadata of every row a filter selects; how many rows changed."""
        with self._gate(collection).writing:
            target = self._existing(collection)
            if target is None:
                return 0
            ids = target.get(where=dict(where), include=[])["ids"]
            if ids:
                target.update(ids=list(ids), metadatas=[dict(metadata) for _ in ids])
        return len(ids)

    def names(self) -> list[str]:
        """The names of every collection in the store (a purge's working copies aside)."""
        found = (str(getattr(c, "name", c)) for c in self._chroma().list_collections())
        return sorted(name for name in found if not name.endswith((REBUILT, RETIRED)))

    def delete_collection(self, collection: str) -> None:
        """Drop a collection and its rows; nothing happens if it does not exist. Its bytes
        stay in the files until `purge`."""
        gate = self._gate(collection)
        with gate.writing, gate.closed():
            self._drop(collection)

    def purge(self, collections: Iterable[str]) -> None:
        """Leave no byte of deleted rows, or of dropped collections, in the store's files.

        Each of `collections` (those rows were deleted from, or dropped) that still exists
        is rebuilt: its rows, unchanged, are copied into a fresh collection, which takes
        its name, and the old one is dropped. Then a child process removes the folders of
        dropped segments and vacuums `chroma.sqlite3`. Searches go on meanwhile (the swap
        holds them back for a moment), writes to a collection being rebuilt wait, and the
        vacuum holds Chroma's own reads and writes back while it rewrites the file.
        Idempotent; completes or undoes a purge a crash cut short. Raises if it fails.

        A rebuild costs about what indexing the rows did (2,000 rows of 384 dimensions:
        0.7 s; 10,000: 7 s), a vacuum grows with the file (50 MB: 0.5 s). `chroma vacuum`
        is no substitute: it leaves the queue of a collection whose index was never
        written and the folders of dropped ones, and exits with 0 when it fails.
        """
        if self._folder is None:
            return  # a server's files are the server's (see the class docstring)
        wanted = sorted(set(collections))
        if _DEFERRED.depth:
            _DEFERRED.stores.setdefault(id(self), (self, set()))[1].update(wanted)
            return
        for collection in wanted:
            self._rebuild(collection)
        self._reclaim_files()

    def _rebuild(self, collection: str) -> None:
        client = self._chroma()
        gate = self._gate(collection)
        with gate.writing:
            old = self._recover(collection)
            self._drop(collection + REBUILT)  # a copy a crash left unfinished
            if old is None:
                return  # dropped: the vacuum takes what is left of it
            fresh = client.create_collection(
                collection + REBUILT, metadata=old.metadata, embedding_function=None
            )
            step = int(client.get_max_batch_size())
            for start in range(0, old.count(), step):
                page = old.get(include=["embeddings", "metadatas"], limit=step, offset=start)
                if page["ids"]:
                    fresh.add(
                        ids=page["ids"],
                        embeddings=np.asarray(page["embeddings"], dtype=np.float32),
                        metadatas=page["metadatas"],
                    )
            if fresh.count() != old.count():
                raise RuntimeError(f"rebuilding {collection}: the copy lost rows")
            with gate.closed():
                old.modify(name=collection + RETIRED)
                fresh.modify(name=collection)
            self._drop(collection + RETIRED)

    def _recover(self, collection: str) -> Any | None:
        """The collection, after finishing or undoing a purge's swap that was cut short:
        a retired original is restored if its name is free, else dropped."""
        retired = self._existing(collection + RETIRED)
        current = self._existing(collection)
        if retired is not None and current is None:
            retired.modify(name=collection)
            return retired
        if retired is not None:
            self._drop(collection + RETIRED)
        return current

    def _drop(self, collection: str) -> None:
        from chromadb.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            self._chroma().delete_collection(collection)

    def _reclaim_files(self) -> None:
        assert self._folder is not None
        if not (self._folder / "chroma.sqlite3").exists():
            return
        done = subprocess.run(
            [sys.executable, "-I", "-c", _RECLAIM, str(self._folder.resolve())],
            capture_output=True,
            text=True,
            timeout=RECLAIM_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"reclaiming Chroma's files failed: {done.stderr.strip()[-800:]}")


def _by_id(found: Mapping[str, Any]) -> dict[str, np.ndarray]:
    rows = found["embeddings"]
    if rows is None or len(rows) == 0:
        return {}
    matrix = np.asarray(rows, dtype=np.float32)
    return {str(row_id): matrix[i] for i, row_id in enumerate(found["ids"])}


__all__ = ["MetadataValue", "VectorStore", "deferred_purges", "forget_clients"]
