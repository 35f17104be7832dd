"""Authorization of documents and groups inside the services, as `test_authorization`
does for conversations: a table names every method that takes a principal; hypothesis
draws a method and a principal without the right (another user, a ghost, another user's
id under any name); the call is refused and no table changes. Methods that only ever
show the principal's own view are checked to show nothing private of anyone else."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from parley.auth.groups import GroupService
from parley.chat.documents.library import DocumentService
from parley.core.domain import Principal, Role
from parley.core.errors import InvalidInput, NotFound, ParleyError, PermissionDenied
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.models import Base
from parley.wiring.services import Services, build_services
from tests.support import ROOT

SECRET = "The vault code is 4417 and only alice knows it."


@dataclass(frozen=True)
class World:
    services: Services
    alice: Principal
    bob: Principal  # in group "staff", which sees alice's shared document
    carol: Principal
    admin: Principal
    private: int  # alice's private document
    shared: int  # alice's document shared with "staff"


@pytest.fixture
def world(services: Services, tmp_path: Path) -> World:
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "v"))
    svc = build_services(
        services.settings, provider=None, background=services.background, document_index=index
    )
    make = svc.accounts.create_user
    alice = make(ROOT, name="alice", password="alice-password")
    bob = make(ROOT, name="bob", password="bob-password")
    carol = make(ROOT, name="carol", password="carol-password")
    admin = make(ROOT, name="root", password="root-password", role=Role.ADMIN)
    svc.groups.create(ROOT, "staff")
    svc.groups.assign(ROOT, "staff", "bob")
    svc.groups.assign(ROOT, "staff", "alice")
    private = svc.documents.add(alice, "vault.txt", SECRET.encode()).id
    shared = svc.documents.add(alice, "menu.txt", b"Soup on Fridays.", groups=("staff",)).id
    return World(svc, alice, bob, carol, admin, private, shared)


Call = Callable[[World, Principal], object]


@dataclass(frozen=True)
class Guarded:
    name: str
    refusal: type[ParleyError]
    call: Call

    def __repr__(self) -> str:
        return self.name


GUARDED: tuple[Guarded, ...] = (
    Guarded("documents.get", NotFound, lambda w, p: w.services.documents.get(p, w.private)),
    Guarded(
        "documents.open_chunk",
        NotFound,
        lambda w, p: w.services.documents.open_chunk(p, w.private, 0),
    ),
    Guarded(
        "documents.share",
        NotFound,
        lambda w, p: w.services.documents.share(p, w.private, public=True),
    ),
    Guarded(
        "documents.unshare",
        NotFound,
        lambda w, p: w.services.documents.unshare(p, w.shared, group="staff"),
    ),
    Guarded("documents.delete", NotFound, lambda w, p: w.services.documents.delete(p, w.shared)),
    Guarded("groups.create", PermissionDenied, lambda w, p: w.services.groups.create(p, "mine")),
    Guarded(
        "groups.assign",
        PermissionDenied,
        lambda w, p: w.services.groups.assign(p, "staff", p.name),
    ),
    Guarded(
        "groups.remove", PermissionDenied, lambda w, p: w.services.groups.remove(p, "staff", "bob")
    ),
    Guarded("groups.list_all", PermissionDenied, lambda w, p: w.services.groups.list_all(p)),
)

# The principal's own view only: what they add is theirs; what they list or find is
# what they may see (checked below).
OWN_VIEW_ONLY = {
    "documents.add",
    "documents.add_files",  # private documents of the principal's own
    "documents.remove_quietly",  # through `delete`'s own check: the test below
    "documents.list_for",
    "documents.search",
    "documents.has_any",
    "documents.passages",
    "groups.names_for",
}


def test_the_table_names_every_method_that_takes_a_principal() -> None:
    taking_principal = {
        f"{service}.{name}"
        for service, cls in {"documents": DocumentService, "groups": GroupService}.items()
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and "principal" in inspect.signature(member).parameters
    }
    assert taking_principal == {g.name for g in GUARDED} | OWN_VIEW_ONLY


def snapshot(world: World) -> tuple[object, ...]:
    with world.services._database.session() as session:
        return tuple(
            tuple(session.execute(select(t).order_by(*t.primary_key.columns)).all())
            for t in Base.metadata.sorted_tables
        )


def strangers(world: World) -> st.SearchStrategy[Principal]:
    """Non-admins other than alice; bob may see the shared document but not manage it."""
    names = st.sampled_from(["alice", "root", "bob", "(operator)"]) | st.text(max_size=8)
    return st.one_of(
        st.sampled_from([world.bob, world.carol]),
        st.builds(
            Principal,
            user_id=st.sampled_from([world.bob.user_id, world.carol.user_id]),
            name=names,
            role=st.just(Role.USER),
        ),
        st.builds(
            Principal,
            user_id=st.integers(10**5, 10**9) | st.just(0),
            name=names,
            role=st.just(Role.USER),
        ),
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(GUARDED), data=st.data())
def test_a_principal_without_the_right_is_refused_and_nothing_changes(
    world: World, method: Guarded, data: st.DataObject
) -> None:
    principal = data.draw(strangers(world), label="principal")
    before = snapshot(world)
    with pytest.raises((NotFound, PermissionDenied)) as refused:
        method.call(world, principal)
    assert isinstance(refused.value, method.refusal), (method.name, refused.value)
    assert snapshot(world) == before


def test_taking_back_a_messages_files_removes_only_ones_own(world: World) -> None:
    for intruder in (world.bob, world.carol):
        world.services.documents.remove_quietly(intruder, [world.private, world.shared])
    assert {d.id for d in world.services.documents.list_for(world.alice)} == {
        world.private,
        world.shared,
    }
    world.services.documents.remove_quietly(world.alice, [world.private])
    assert {d.id for d in world.services.documents.list_for(world.alice)} == {world.shared}


def test_own_view_methods_show_nothing_private_of_another_user(world: World) -> None:
    docs = world.services.documents
    for who in (world.bob, world.carol, Principal(world.bob.user_id, "alice", Role.USER)):
        assert world.private not in {d.id for d in docs.list_for(who)}
        assert all(h.document_id != world.private for h in docs.search(who, SECRET, k=10))
        found = docs.passages(who, SECRET, max_tokens=2000, min_score=-1.0)
        assert all(p.first.document_id != world.private for p in found)
        assert not docs.has_any(who, [world.private])
    assert docs.has_any(world.bob, [world.shared]) and not docs.has_any(world.carol)
    assert world.services.groups.names_for(world.carol) == []
    assert world.services.groups.names_for(world.bob) == ["staff"]
    with pytest.raises(InvalidInput, match="only with groups you are in"):  # not hers
        docs.add(world.carol, "x.txt", b"Carol's.", groups=("staff",))
    with pytest.raises(InvalidInput, match="only with groups you are in"):  # none such
        docs.share(world.alice, world.private, group="nonexistent")
    assert world.services.groups.names_for(world.admin) == ["staff"]
    added = docs.add(world.carol, "own.txt", b"Carol's own note.")
    assert added.owner == "carol"


def test_the_owner_and_admins_may(world: World) -> None:
    docs, groups = world.services.documents, world.services.groups
    for manager in (world.alice, world.admin, ROOT):
        assert docs.get(manager, world.private).name == "vault.txt"
        assert "4417" in docs.open_chunk(manager, world.private, 0).text
        assert docs.share(manager, world.private, public=True).public
        assert not docs.unshare(manager, world.private, public=True).public
    assert "Soup" in docs.open_chunk(world.bob, world.shared, 0).text  # shared with him
    for admin in (world.admin, ROOT):
        groups.create(admin, f"g{admin.user_id}")
        groups.assign(admin, f"g{admin.user_id}", "carol")
        assert ("staff", ["alice", "bob"]) in groups.list_all(admin)
        groups.remove(admin, f"g{admin.user_id}", "carol")
    docs.delete(world.alice, world.shared)
    with pytest.raises(NotFound):
        docs.get(world.bob, world.shared)
