"""Documents: ingestion all or nothing, sharing, and search that never shows what a user
may not see (a property test over random users, groups, shares and revocations)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from parley.chat.documents.library import DocumentService
from parley.core.config import Settings
from parley.core.domain import Principal
from parley.core.errors import InvalidInput, NotFound, StorageUnavailable
from parley.retrieval.document_index import (
    LEGACY_COLLECTION,
    PUBLIC_SCOPE,
    DocumentAccess,
    DocumentIndex,
    group_scope,
    user_scope,
)
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.models import Document, DocumentChunk
from parley.wiring.factories import build_vector_store
from parley.wiring.services import Services, build_services
from tests.support import ROOT


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    return VectorStore.persistent(tmp_path / "chroma-docs")


@pytest.fixture
def docs(services: Services, store: VectorStore) -> Services:
    index = DocumentIndex(embedder=HashingEmbedder(), store=store)
    return build_services(
        services.settings, provider=None, background=services.background, document_index=index
    )


def rows(store: VectorStore) -> set[tuple[str, str]]:
    """(collection, row id) of every document row, in every scope."""
    return {
        (name, row_id)
        for name in store.names()
        if name.startswith("documents")
        for row_id in store.get(name)
    }


def test_a_private_document_is_its_owners_alone(
    docs: Services, alice: Principal, bob: Principal
) -> None:
    info = docs.documents.add(alice, "lake.md", b"# Lake\nThe lake froze in January.\n")
    assert (info.owner, info.public, info.groups, info.chunks) == ("alice", False, (), 1)
    hits = docs.documents.search(alice, "lake froze")
    assert [(h.name, h.heading) for h in hits] == [("lake.md", "Lake")]
    assert "froze in January" in hits[0].text
    assert docs.documents.search(bob, "lake froze") == []
    assert docs.documents.list_for(bob) == []
    with pytest.raises(NotFound):
        docs.documents.get(bob, info.id)
    with pytest.raises(NotFound):
        docs.documents.delete(bob, info.id)


def test_sharing_with_a_group_public_and_revoking_take_effect_at_once(
    docs: Services, alice: Principal, bob: Principal
) -> None:
    info = docs.documents.add(alice, "plan.txt", b"The launch is on the fifth of June.")
    docs.groups.create(ROOT, "team")
    docs.groups.assign(ROOT, "team", "bob")
    docs.groups.assign(ROOT, "team", "alice")  # one shares with one's own groups
    docs.documents.share(alice, info.id, group="team")
    assert [h.document_id for h in docs.documents.search(bob, "launch June")] == [info.id]
    docs.groups.remove(ROOT, "team", "bob")  # out of the group: gone on the next search
    assert docs.documents.search(bob, "launch June") == []
    docs.documents.share(alice, info.id, public=True)
    assert [h.document_id for h in docs.documents.search(bob, "launch June")] == [info.id]
    docs.documents.unshare(alice, info.id, public=True)
    assert docs.documents.search(bob, "launch June") == []
    docs.documents.delete(alice, info.id)
    assert docs.documents.search(alice, "launch June") == []
    assert rows(docs.documents._index._store) == set()  # type: ignore[attr-defined]


def test_the_same_content_is_not_indexed_twice(docs: Services, alice: Principal) -> None:
    docs.documents.add(alice, "a.txt", b"identical words here")
    with pytest.raises(InvalidInput, match="already have this content as 'a.txt'"):
        docs.documents.add(alice, "b.txt", b"identical words here")


def test_a_failure_while_indexing_leaves_nothing(
    services: Services, store: VectorStore, alice: Principal
) -> None:
    class Failing(DocumentIndex):
        def add(self, document_id: int, vectors: np.ndarray, access: DocumentAccess) -> None:
            super().add(document_id, vectors[:1], access)  # half written, then it breaks
            raise ConnectionError("vector store went away")

    broken = build_services(
        services.settings,
        background=services.background,
        document_index=Failing(embedder=HashingEmbedder(), store=store),
    )
    with pytest.raises(StorageUnavailable) as failed:
        broken.documents.add(alice, "long.txt", " ".join(["word"] * 2000).encode())
    assert failed.value.user_message.startswith("long.txt could not be indexed")
    with services._database.session() as session:
        assert session.scalars(select(Document)).all() == []
        assert session.scalars(select(DocumentChunk)).all() == []
    assert rows(store) == set()


def test_an_upload_holds_no_lock_while_it_is_indexed_and_is_unseen_until_ready(
    services: Services, store: VectorStore, alice: Principal, bob: Principal
) -> None:
    """While the vector store indexes an upload, other people sign in and write (the
    database's write lock is free), and no read shows the half-made document."""
    indexing, release = threading.Event(), threading.Event()

    class Slow(DocumentIndex):
        def add(self, document_id: int, vectors: np.ndarray, access: DocumentAccess) -> None:
            indexing.set()
            assert release.wait(30)
            super().add(document_id, vectors, access)

    slow = build_services(
        services.settings,
        background=services.background,
        document_index=Slow(embedder=HashingEmbedder(), store=store),
    )
    added: list[int] = []
    upload = threading.Thread(
        target=lambda: added.append(
            slow.documents.add(alice, "lake.md", b"# Lake\nThe lake froze in January.\n").id
        )
    )
    upload.start()
    try:
        assert indexing.wait(30)
        started = time.monotonic()
        # A write-locked transaction of someone else's: a sign-in and its audit record.
        assert slow.accounts.authenticate(name="bob", password="bob-password") == bob
        assert time.monotonic() - started < 2.0
        assert slow.documents.list_for(alice) == [] and slow.documents.list_for(ROOT) == []
        assert not slow.documents.has_any(alice)
    finally:
        release.set()
        upload.join(30)
    assert [d.id for d in slow.documents.list_for(alice)] == added
    assert [h.name for h in slow.documents.search(alice, "lake froze")] == ["lake.md"]


def test_a_deleted_documents_vectors_are_purged_off_the_request(
    docs: Services, store: VectorStore, alice: Principal
) -> None:
    """A delete answers once the rows are gone; dropping and purging the vectors (a
    rebuild of the scope) runs on the background pool, and the database keeps the
    document out of every search meanwhile."""
    later: list[Callable[[], None]] = []

    def defer(task: Callable[[], None], _name: str) -> bool:
        later.append(task)
        return True

    deferred = DocumentService(docs._database, docs.documents._index, defer=defer)
    info = deferred.add(alice, "lake.md", b"# Lake\nThe lake froze in January.\n")
    deferred.delete(alice, info.id)
    assert rows(store) and len(later) == 1  # not yet: the request did not wait for it
    assert deferred.search(alice, "lake froze") == []
    later.pop()()
    assert rows(store) == set()


def test_an_upload_abandoned_by_a_dead_process_is_swept(
    docs: Services, store: VectorStore, alice: Principal
) -> None:
    info = docs.documents.add(alice, "lake.md", b"# Lake\nThe lake froze in January.\n")
    with docs._database.session() as session:  # as if its process died before "ready"
        session.execute(update(Document).values(ready=False))
    assert docs.documents.search(alice, "lake froze") == []
    assert docs.documents.sweep_abandoned(older_than=timedelta(0)) == 1
    with docs._database.session() as session:
        assert session.scalars(select(Document)).all() == []
        assert session.scalars(select(DocumentChunk)).all() == []
    assert rows(store) == set() and info.id


def test_rows_live_in_the_scopes_that_may_see_them_and_move_when_sharing_changes(
    docs: Services, store: VectorStore, alice: Principal
) -> None:
    team = docs.groups.create(ROOT, "team")
    docs.groups.assign(ROOT, "team", "alice")
    info = docs.documents.add(alice, "two.md", b"# One\nFirst part.\n# Two\nSecond part.")
    mine = {(user_scope(alice.user_id), f"{info.id}:{i}") for i in range(info.chunks)}
    assert rows(store) == mine
    docs.documents.share(alice, info.id, group="team")
    in_team = {(group_scope(team), row_id) for _, row_id in mine}
    assert rows(store) == mine | in_team
    docs.documents.share(alice, info.id, public=True)
    public = {(PUBLIC_SCOPE, row_id) for _, row_id in mine}
    assert rows(store) == mine | in_team | public
    tags = store.rows(group_scope(team))[f"{info.id}:0"][1]
    assert tags["public"] is True and tags[f"g{team}"] is True  # re-tagged where kept
    docs.documents.unshare(alice, info.id, group="team")
    docs.documents.unshare(alice, info.id, public=True)
    assert rows(store) == mine
    docs.documents.delete(alice, info.id)
    assert rows(store) == set()


def test_vectors_of_the_one_shared_collection_move_into_scopes_at_start_up(
    docs: Services, store: VectorStore, alice: Principal, bob: Principal
) -> None:
    team = docs.groups.create(ROOT, "team")
    docs.groups.assign(ROOT, "team", "bob")
    info = docs.documents.add(alice, "old.md", b"Kept the older way.")
    docs.documents.share(ROOT, info.id, group="team")  # admins share with any group
    vector = store.get(user_scope(alice.user_id))[f"{info.id}:0"]
    for name in store.names():
        store.delete_collection(name)
    legacy = DocumentAccess(alice.user_id, False, frozenset({team}))
    store.add(LEGACY_COLLECTION, [f"{info.id}:0"], vector[None, :], [legacy.metadata(info.id)])
    assert docs.documents.sweep_index() == 0
    assert LEGACY_COLLECTION not in store.names()
    assert rows(store) == {
        (user_scope(alice.user_id), f"{info.id}:0"),
        (group_scope(team), f"{info.id}:0"),
    }
    assert [h.document_id for h in docs.documents.search(bob, "Kept the older way")] == [info.id]


# ---------------------------------------------------------------- the property

TEXTS = [
    "apples grow in the northern orchard",
    "the bridge toll rises in spring",
    "quarterly tax filing is due soon",
    "our choir rehearses on thursdays",
    "the lighthouse keeper retired",
]


@pytest.fixture(params=["embedded", "server"])
def fresh_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], VectorStore]:
    """A new, empty documents store per call: embedded Chroma, or a Chroma server that
    the tests start, chosen as the app chooses it (by `PARLEY_CHROMA_URL`)."""
    if request.param == "embedded":
        return lambda: VectorStore.persistent(tmp_path_factory.mktemp("chroma"))
    url = request.getfixturevalue("chroma_url")

    def on_the_server() -> VectorStore:
        settings = Settings(data_dir=tmp_path_factory.mktemp("data"), chroma_url=url)
        store = build_vector_store(settings)
        for name in store.names():
            if name.startswith("documents"):
                store.delete_collection(name)
        return store

    return on_the_server


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 2),  # owner
            st.booleans(),  # public
            st.sets(st.integers(0, 1), max_size=2),  # groups shared with
        ),
        min_size=1,
        max_size=5,
    ),
    members=st.sets(st.tuples(st.integers(0, 1), st.integers(0, 2)), max_size=6),
    revoked=st.sets(st.integers(0, 4), max_size=2),
    deleted=st.sets(st.integers(0, 4), max_size=1),
)
def test_no_user_ever_finds_what_they_may_not_see(
    services: Services,
    fresh_store: Callable[[], VectorStore],
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[tuple[int, bool, set[int]]],
    members: set[tuple[int, int]],
    revoked: set[int],
    deleted: set[int],
) -> None:
    index = DocumentIndex(embedder=HashingEmbedder(), store=fresh_store())
    world = build_services(services.settings, background=services.background, document_index=index)
    # A fresh database world per example: users, groups, memberships.
    run = len(list(tmp_path_factory.getbasetemp().iterdir()))
    users = [
        world.accounts.create_user(ROOT, name=f"u{run}x{n}", password="password-123")
        for n in range(3)
    ]
    groups = [f"g{run}x{n}" for n in range(2)]
    for name in groups:
        world.groups.create(ROOT, name)
    for group, user in members:
        world.groups.assign(ROOT, groups[group], users[user].name)
    documents = []
    for n, (owner, public, shared) in enumerate(plan):
        info = world.documents.add(
            users[owner], f"d{n}.txt", f"{TEXTS[n]} ({run})".encode(), public=public
        )
        for g in sorted(shared):  # an admin shares: owners may share only with their groups
            world.documents.share(ROOT, info.id, group=groups[g])
        documents.append((info.id, owner, public, set(shared)))
    for n in revoked & set(range(len(documents))):  # revoke every share of that document
        doc_id, owner, public, shared = documents[n]
        for g in shared:
            world.documents.unshare(users[owner], doc_id, group=groups[g])  # the owner may
        if public:
            world.documents.unshare(users[owner], doc_id, public=True)
        documents[n] = (doc_id, owner, False, set())
    for n in deleted & set(range(len(documents))):
        world.documents.delete(users[documents[n][1]], documents[n][0])
        documents[n] = (documents[n][0], -1, False, set())  # seen by nobody

    def may_see(user: int, owner: int, public: bool, shared: set[int]) -> bool:
        in_groups = {g for g, u in members if u == user}
        return owner == user or (owner >= 0 and (public or bool(shared & in_groups)))

    ours = {d[0] for d in documents}
    with world._database.session() as session:  # earlier examples' documents: public ones only
        public_elsewhere = set(
            session.scalars(select(Document.id).where(Document.public, Document.id.not_in(ours)))
        )
    for u, user in enumerate(users):
        visible = {d[0] for d in documents if may_see(u, d[1], d[2], d[3])}
        for n, (doc_id, *_rest) in enumerate(documents):
            hits = world.documents.search(user, f"{TEXTS[n]} ({run})", k=10)
            found = {h.document_id for h in hits}
            assert found <= visible | public_elsewhere, (u, found - visible)
            assert (doc_id in found) == (doc_id in visible)  # its exact text finds it
        listed = {d.id for d in world.documents.list_for(user)}
        assert listed & ours == visible and listed - ours <= public_elsewhere


class Flaky(DocumentIndex):
    """An index whose updates fail while `down` (adding and searching still work)."""

    down = False

    def sync(self, document_id: int, access: DocumentAccess | None, stale: Iterable[str]) -> None:
        if self.down:
            raise ConnectionError("vector store went away")
        super().sync(document_id, access, stale)


def test_a_deleted_documents_vectors_go_even_if_the_store_fails_at_first(
    services: Services, store: VectorStore, alice: Principal
) -> None:
    index = Flaky(embedder=HashingEmbedder(), store=store)
    flaky = build_services(services.settings, background=services.background, document_index=index)
    info = flaky.documents.add(alice, "gone.txt", b"Erase me entirely.")
    index.down = True
    flaky.documents.delete(alice, info.id)
    assert flaky.documents.search(alice, "Erase me entirely") == []  # gone from search now
    assert rows(store)  # the vectors are still there: the store was down
    assert flaky.documents.sweep_index() == 1  # still down: still pending
    index.down = False
    assert flaky.documents.sweep_index() == 0
    assert rows(store) == set()
    assert flaky.documents.sweep_index() == 0  # nothing left to do


def test_a_share_or_revocation_the_index_missed_is_applied_later(
    services: Services, store: VectorStore, alice: Principal, bob: Principal
) -> None:
    index = Flaky(embedder=HashingEmbedder(), store=store)
    flaky = build_services(services.settings, background=services.background, document_index=index)
    team = flaky.groups.create(ROOT, "team")
    for name in ("alice", "bob"):
        flaky.groups.assign(ROOT, "team", name)
    info = flaky.documents.add(alice, "memo.txt", b"The offsite is in Lisbon.")
    index.down = True
    flaky.documents.share(alice, info.id, group="team")  # saved; the index did not follow
    assert flaky.documents.get(bob, info.id).groups == ("team",)
    assert flaky.documents.search(bob, "offsite Lisbon") == []
    index.down = False
    assert flaky.documents.sweep_index() == 0
    assert [h.document_id for h in flaky.documents.search(bob, "offsite Lisbon")] == [info.id]
    index.down = True
    flaky.documents.unshare(alice, info.id, group="team")
    assert flaky.documents.search(bob, "offsite Lisbon") == []  # the database says no at once
    assert any(scope == group_scope(team) for scope, _ in rows(store))  # stale rows, for now
    index.down = False
    assert flaky.documents.sweep_index() == 0
    assert {scope for scope, _ in rows(store)} == {user_scope(alice.user_id)}


def test_relevant_neighbouring_chunks_join_one_passage_within_the_allotment() -> None:
    from parley.chat.documents.hits import Hit, group_passages

    def hit(doc: int, chunk: int, rank: float, words: int = 50) -> Hit:
        text = " ".join(["word"] * words)
        return Hit(doc, f"d{doc}", "alice", chunk, "", None, text, 0.5, "owner", rank)

    best_first = [hit(1, 4, 3.0), hit(2, 0, 2.5), hit(1, 5, 2.0), hit(1, 3, 1.0), hit(1, 9, 0.9)]
    runs = group_passages(best_first, max_tokens=10_000)
    assert [(p.first.document_id, p.chunks) for p in runs] == [
        (1, (3, 4, 5)),  # chunk 4 with its relevant neighbours, in document order
        (2, (0,)),
        (1, (9,)),  # not adjacent: a passage of its own
    ]
    tight = group_passages(best_first, max_tokens=2 * 50 + 20)  # room for two chunks
    assert [(p.first.document_id, p.chunks) for p in tight] == [(1, (4, 5))]  # weakest end cut
