"""Documents: ingestion throughput, and permission-filtered search latency at scale.

**Ingestion** goes through `DocumentService.add` (parse, chunk, MiniLM on onnxruntime,
SQLite, embedded Chroma) for documents made of LoCoMo sessions, and is set beside the
bare model embedding the same chunks: the ratio says how much the rest of the path
costs on top of the embedding model.

**Search** runs `DocumentService.search` (the question's embedding, the Chroma query
filtered by the user's id and groups, the database's check of every hit, BM25 fused
with cosine over the candidates) for LoCoMo questions, asked by users who each see a
different slice: their own documents, documents shared with their groups, and public
ones. The store holds 10,000 and then 100,000 chunks; every user searches once before
the timing (a user's first search loads their collections from disk, as after a
restart). Embedding 100,000 chunks for
real would take over an hour on two cores, so the index is filled with the real
vectors of a few thousand LoCoMo chunks, each copy jittered and re-normalised (the
same dimension and spread), with their texts in the database; only the ingestion
figure needs the model to run on every chunk, and it is measured for real.

Run: `.venv/bin/python -m parley.bench.documents --data ../shared/data/locomo_dev.json
[--sizes 10000 100000] [--queries 200]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from parley.bench.locomo import load
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import Principal, Role
from parley.retrieval.document_index import DocumentAccess, DocumentIndex
from parley.retrieval.documents import chunk, parse
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.store.models import Document, DocumentChunk, DocumentGroup
from parley.wiring import Services, build_services
from parley.wiring.factories import build_document_index, shared_embedder

OPERATOR = Principal(user_id=0, name="(operator)", role=Role.ADMIN)
USERS = 40
GROUPS = 8
CHUNKS_PER_DOCUMENT = 10
PUBLIC_SHARE = 0.03  # of documents, public to all
GROUP_SHARE = 0.25  # of documents, shared with one or two groups


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def session_texts(data: Path) -> tuple[list[str], list[str]]:
    """LoCoMo sessions as plain-text documents, and the benchmark's questions."""
    texts: list[str] = []
    questions: list[str] = []
    for conversation in load(data):
        sessions: dict[str, list[str]] = {}
        for turn in conversation.turns:
            sessions.setdefault(turn.session or "", []).append(f"{turn.speaker}: {turn.content}")
        texts += ["\n".join(lines) for lines in sessions.values()]
        questions += [str(q["question"]) for q in conversation.questions if q.get("question")]
    return texts, questions


@dataclass
class Ingestion:
    documents: int
    chunks: int
    seconds: float
    model_seconds: float

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds

    @property
    def model_rate(self) -> float:
        return self.chunks / self.model_seconds


def measure_ingestion(services: Services, owner: Principal, texts: list[str]) -> Ingestion:
    """Every document through the service, then the same chunks through the bare model."""
    started = time.perf_counter()
    chunks = 0
    for n, text in enumerate(texts):
        chunks += services.documents.add(owner, f"session-{n}.txt", text.encode()).chunks
    seconds = time.perf_counter() - started
    plain = [c.text for text in texts for c in chunk(parse("s.txt", text.encode()))]
    started = time.perf_counter()
    shared_embedder(services.settings).embed(plain)
    return Ingestion(len(texts), chunks, seconds, time.perf_counter() - started)


def fill(
    services: Services,
    index: DocumentIndex,
    users: list[Principal],
    groups: list[int],
    target: int,
    pool: tuple[list[str], np.ndarray],
    rng: random.Random,
) -> int:
    """Add documents of real chunk texts and jittered real vectors until `target` chunks."""
    texts, vectors = pool
    store_rng = np.random.default_rng(rng.randrange(2**32))
    database = services._database  # seeding 100,000 chunks bypasses the services
    with database.session() as session:
        have = int(session.scalar(select(func.coalesce(func.sum(Document.chunks), 0))) or 0)
    while have < target:
        with database.session() as session:
            batch: list[tuple[int, np.ndarray, DocumentAccess]] = []
            for _ in range(min(500, -(-(target - have) // CHUNKS_PER_DOCUMENT))):
                owner = rng.choice(users)
                public = rng.random() < PUBLIC_SHARE
                shared = (
                    rng.sample(groups, rng.choice((1, 2))) if rng.random() < GROUP_SHARE else []
                )
                picks = [rng.randrange(len(texts)) for _ in range(CHUNKS_PER_DOCUMENT)]
                document = Document(
                    owner_id=owner.user_id,
                    name=f"doc-{have}.txt",
                    sha256=f"{have:064d}",
                    public=public,
                    chunks=CHUNKS_PER_DOCUMENT,
                    tokens=CHUNKS_PER_DOCUMENT * 300,
                )
                session.add(document)
                session.flush()
                session.add_all(DocumentGroup(document_id=document.id, group_id=g) for g in shared)
                session.add_all(
                    DocumentChunk(document_id=document.id, index=i, text=texts[p], tokens=300)
                    for i, p in enumerate(picks)
                )
                jitter = store_rng.normal(0.0, 0.02, (len(picks), vectors.shape[1]))
                rows = vectors[picks] + jitter.astype(np.float32)
                rows /= np.linalg.norm(rows, axis=1, keepdims=True)
                batch.append(
                    (document.id, rows, DocumentAccess(owner.user_id, public, frozenset(shared)))
                )
                have += CHUNKS_PER_DOCUMENT
        index.add_many(batch)
    return have


def measure_search(
    services: Services, users: list[Principal], questions: list[str], rounds: int
) -> tuple[float, float, float]:
    """(p50, p95, mean hits) of `search` in milliseconds, by users in turn."""
    for n, user in enumerate(users):  # each user's first search loads their collections
        services.documents.search(user, questions[-1 - n], k=5)
    timings: list[float] = []
    hits: list[int] = []
    for n in range(rounds):
        user = users[n % len(users)]
        question = questions[n % len(questions)]
        started = time.perf_counter()
        found = services.documents.search(user, question, k=5)
        timings.append((time.perf_counter() - started) * 1000)
        hits.append(len(found))
    return percentile(timings, 50), percentile(timings, 95), statistics.mean(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/locomo_dev.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ingest", type=int, default=60, help="documents ingested for real")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts, questions = session_texts(args.data)
    rng.shuffle(texts)
    rng.shuffle(questions)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), memory_strategy="token_window")
        upgrade(Database(settings.resolved_database_url))
        index = build_document_index(settings)
        services = build_services(
            settings, background=BackgroundWork(workers=0), document_index=index
        )
        users = [
            services.accounts.create_user(OPERATOR, name=f"user{n}", password="bench-password")
            for n in range(USERS)
        ]
        groups = [services.groups.create(OPERATOR, f"team{n}") for n in range(GROUPS)]
        for user in users:
            for name in rng.sample(range(GROUPS), rng.choice((0, 1, 2))):
                services.groups.assign(OPERATOR, f"team{name}", user.name)
        shared_embedder(settings).embed(["warm up"])  # loading the model is not ingestion
        ingestion = measure_ingestion(services, users[0], texts[: args.ingest])
        pool_texts = [c.text for text in texts for c in chunk(parse("s.txt", text.encode()))]
        pool = (pool_texts, shared_embedder(settings).embed(pool_texts))
        print(
            f"ingestion: {ingestion.documents} documents, {ingestion.chunks} chunks, "
            f"{ingestion.rate:.1f} chunks/s through the service; the model alone "
            f"{ingestion.model_rate:.1f} chunks/s ({ingestion.rate / ingestion.model_rate:.0%})"
        )
        rows = []
        for size in sorted(args.sizes):
            started = time.perf_counter()
            have = fill(services, index, users, groups, size, pool, rng)
            filled = time.perf_counter() - started
            p50, p95, mean_hits = measure_search(services, users, questions, args.queries)
            visible = [len(services.documents.list_for(u)) for u in users[:5]]
            rows.append((have, p50, p95, mean_hits, filled, visible))
            print(f"  {have:,} chunks: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
        print()
        print("| chunks in the store | search p50 | search p95 | hits per search |")
        print("|---:|---:|---:|---:|")
        for have, p50, p95, mean_hits, _, _ in rows:
            print(f"| {have:,} | {p50:.1f} ms | {p95:.1f} ms | {mean_hits:.1f} |")
        print()
        print(
            f"Ingestion: {ingestion.rate:.1f} chunks/s through DocumentService.add "
            f"({ingestion.chunks} chunks of up to 300 tokens); MiniLM alone on the same "
            f"chunks: {ingestion.model_rate:.1f} chunks/s."
        )
        print(
            f"Users: {USERS}, groups: {GROUPS}; documents each of the first five users sees "
            f"at the largest size: {rows[-1][5]}."
        )


if __name__ == "__main__":
    main()
