"""Authorization inside the services: no principal reaches data that is not theirs.

A table names every service method that reads or changes a user's data, how to call it
against one owner's data, and which refusal it must give (`NotFound` for another user's
data, `PermissionDenied` for admin-only calls). Hypothesis draws a method and a principal
without the right (another user, an id that is no account, another user's id under any
name); the call must be refused and every table must be left exactly as it was. The
positive side (owner and admins succeed) keeps the checks from being too strict.
"""

from __future__ import annotations

import inspect
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sqlalchemy import select

from parley.auth.accounts import AccountService
from parley.chat.batch.service import BatchService
from parley.chat.conversation.conversations import ConversationService
from parley.chat.conversation.feedback import FeedbackService
from parley.chat.conversation.lab import StrategyLab
from parley.chat.conversation.search import ConversationSearch
from parley.chat.conversation.service import ChatService
from parley.chat.conversation.transfer import ConversationTransfer
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.chat.gateway.quotas import QuotaService
from parley.chat.gateway.usage import UsageService
from parley.core.domain import Principal, Rating, Role
from parley.core.errors import NotFound, ParleyError, PermissionDenied, ProviderError
from parley.store.models import Base, Image
from parley.wiring.services import Services
from tests.support import ROOT


@dataclass(frozen=True)
class Owned:
    """One user's data: an answered conversation (with its question) and a failed one."""

    owner: Principal
    answered: int
    question_id: int
    failed: int
    quota: tuple[int, int]
    image_id: int  # sent with the question


@dataclass(frozen=True)
class World:
    services: Services
    scripted: ScriptedProvider
    owners: tuple[Owned, ...]
    carol: Principal  # a user with no conversations
    admin: Principal  # an administrator with an account
    names: itertools.count[int]  # fresh user names for create_user

    @property
    def user_ids(self) -> set[int]:
        return {o.owner.user_id for o in self.owners} | {self.carol.user_id, self.admin.user_id}

    @property
    def users(self) -> list[Principal]:
        return [*(o.owner for o in self.owners), self.carol]


def own_data(services: Services, scripted: ScriptedProvider, owner: Principal, n: int) -> Owned:
    picture = io.BytesIO()
    PILImage.new("RGB", (16, 16), "red").save(picture, "PNG")
    reply = services.chat.send(
        owner, None, f"{owner.name}'s private question", files=[("p.png", picture.getvalue())]
    )
    list(reply)
    with services._database.session() as session:
        image_id = session.scalar(select(Image.id).where(Image.user_id == owner.user_id))
    assert image_id is not None
    services.conversations.rename(owner, reply.conversation_id, f"{owner.name}'s secrets")
    services.lab.set_conversation_strategy(ROOT, reply.conversation_id, "window")
    scripted.enqueue_error(ProviderError("down", user_message="The model is down."))
    failed = services.chat.send(owner, None, f"{owner.name} asks again")
    list(failed)
    quota = (100 + n, 10_000 + n)
    services.quotas.set_quota(
        ROOT, owner.user_id, messages_per_day=quota[0], tokens_per_day=quota[1]
    )
    return Owned(
        owner, reply.conversation_id, reply.user_message_id, failed.conversation_id, quota, image_id
    )


@pytest.fixture
def world(services: Services, scripted: ScriptedProvider) -> World:
    # A priced model: a free one skips the estimate, and with it the ownership check.
    scripted.model = "claude-sonnet-test"
    scripted.takes_images = True  # each owner's question goes with an image
    accounts = services.accounts
    alice = accounts.create_user(ROOT, name="alice", password="alice-password")
    bob = accounts.create_user(ROOT, name="bob", password="bob-password")
    carol = accounts.create_user(ROOT, name="carol", password="carol-password")
    admin = accounts.create_user(ROOT, name="root", password="root-password", role=Role.ADMIN)
    owners = (own_data(services, scripted, alice, 1), own_data(services, scripted, bob, 2))
    return World(services, scripted, owners, carol, admin, itertools.count())


def snapshot(world: World) -> tuple[object, ...]:
    """Every row of every table, and how many calls reached the model."""
    with world.services._database.session() as session:
        tables = tuple(
            tuple(session.execute(select(table).order_by(*table.primary_key.columns)).all())
            for table in Base.metadata.sorted_tables
        )
    return (*tables, len(world.scripted.requests))


@dataclass(frozen=True)
class Attempt:
    """`principal` calls a method against `data` (one owner's)."""

    world: World
    principal: Principal
    data: Owned

    @property
    def services(self) -> Services:
        return self.world.services


Call = Callable[[Attempt], object]


@dataclass(frozen=True)
class Guarded:
    name: str  # service.method, as in the code
    refusal: type[ParleyError]
    call: Call

    def __repr__(self) -> str:  # hypothesis and pytest show the method's name
        return self.name


GUARDED: tuple[Guarded, ...] = (
    Guarded(
        "feedback.give",
        NotFound,
        lambda a: a.services.feedback.give(a.principal, a.data.question_id + 1, Rating.DOWN, "x"),
    ),
    Guarded("feedback.find", PermissionDenied, lambda a: a.services.feedback.find(a.principal)),
    Guarded(
        "conversations.set_pinned",
        NotFound,
        lambda a: a.services.conversations.set_pinned(a.principal, a.data.answered, True),
    ),
    Guarded(
        "conversations.set_archived",
        NotFound,
        lambda a: a.services.conversations.set_archived(a.principal, a.data.answered, True),
    ),
    Guarded(
        "transfer.export",
        NotFound,
        lambda a: a.services.transfer.export(a.principal, a.data.answered, "json"),
    ),
    Guarded(
        "accounts.create_user",
        PermissionDenied,
        lambda a: a.services.accounts.create_user(
            a.principal, name=f"intruder{next(a.world.names)}", password="intruder-password"
        ),
    ),
    Guarded(
        "accounts.list_users",
        PermissionDenied,
        lambda a: a.services.accounts.list_users(a.principal),
    ),
    Guarded(
        "accounts.set_disabled",
        PermissionDenied,
        lambda a: a.services.accounts.set_disabled(a.principal, a.data.owner.name, disabled=True),
    ),
    Guarded(
        "accounts.set_password",
        PermissionDenied,
        lambda a: a.services.accounts.set_password(
            a.principal, a.data.owner.name, "taken-over-password"
        ),
    ),
    Guarded(
        "accounts.unlock",
        PermissionDenied,
        lambda a: a.services.accounts.unlock(a.principal, a.data.owner.name),
    ),
    Guarded(
        "accounts.locked_until",
        PermissionDenied,
        lambda a: a.services.accounts.locked_until(a.principal),
    ),
    Guarded(
        "accounts.find_principal",
        PermissionDenied,
        lambda a: a.services.accounts.find_principal(a.principal, a.data.owner.name),
    ),
    Guarded(
        "quotas.today",
        NotFound,
        lambda a: a.services.quotas.today(a.principal, a.data.owner.user_id),
    ),
    Guarded(
        "quotas.stored_quota",
        NotFound,
        lambda a: a.services.quotas.stored_quota(a.principal, a.data.owner.user_id),
    ),
    Guarded(
        "quotas.quota",
        NotFound,
        lambda a: a.services.quotas.quota(a.principal, a.data.owner.user_id),
    ),
    Guarded(
        "quotas.set_quota",
        PermissionDenied,
        lambda a: a.services.quotas.set_quota(
            a.principal, a.data.owner.user_id, messages_per_day=0, tokens_per_day=0
        ),
    ),
    Guarded(
        "usage.by_user_and_day",
        PermissionDenied,
        lambda a: a.services.usage.by_user_and_day(a.principal),
    ),
    Guarded(
        "usage.facts",
        PermissionDenied,
        lambda a: a.services.usage.facts(a.principal, since=date(2000, 1, 1), until=date.today()),
    ),
    Guarded(
        "usage.report",
        PermissionDenied,
        lambda a: a.services.usage.report(a.principal, since=date(2000, 1, 1), until=date.today()),
    ),
    Guarded(
        "conversations.get",
        NotFound,
        lambda a: a.services.conversations.get(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.rename",
        NotFound,
        lambda a: a.services.conversations.rename(a.principal, a.data.answered, "mine now"),
    ),
    Guarded(
        "conversations.delete",
        NotFound,
        lambda a: a.services.conversations.delete(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.messages",
        NotFound,
        lambda a: a.services.conversations.messages(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.messages_of",
        PermissionDenied,
        lambda a: a.services.conversations.messages_of(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.documents_of",
        NotFound,
        lambda a: a.services.conversations.documents_of(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.choose_documents",
        NotFound,
        lambda a: a.services.conversations.choose_documents(a.principal, a.data.answered, [1]),
    ),
    Guarded(
        "conversations.list_all",
        PermissionDenied,
        lambda a: a.services.conversations.list_all(a.principal),
    ),
    Guarded(
        "lab.strategy_of",
        NotFound,
        lambda a: a.services.lab.strategy_of(a.principal, a.data.answered),
    ),
    Guarded(
        "lab.set_conversation_strategy",
        PermissionDenied,
        lambda a: a.services.lab.set_conversation_strategy(a.principal, a.data.answered, "full"),
    ),
    Guarded(
        "lab.options_of",
        PermissionDenied,
        lambda a: a.services.lab.options_of(a.principal, a.data.answered, "window"),
    ),
    Guarded(
        "lab.set_memory_options",
        PermissionDenied,
        lambda a: a.services.lab.set_memory_options(
            a.principal, a.data.answered, "window", {"turns": 2}
        ),
    ),
    Guarded(
        "lab.replay_context",
        PermissionDenied,
        lambda a: a.services.lab.replay_context(
            a.principal, a.data.answered, a.data.question_id, "full"
        ),
    ),
    # Batch jobs are the operator's: every method is for admins.
    Guarded(
        "batches.submit",
        PermissionDenied,
        lambda a: a.services.batches.submit(a.principal, "titles"),
    ),
    Guarded("batches.jobs", PermissionDenied, lambda a: a.services.batches.jobs(a.principal)),
    Guarded("batches.job", PermissionDenied, lambda a: a.services.batches.job(a.principal, 1)),
    Guarded(
        "batches.collect", PermissionDenied, lambda a: a.services.batches.collect(a.principal, 1)
    ),
    Guarded(
        "batches.cancel", PermissionDenied, lambda a: a.services.batches.cancel(a.principal, 1)
    ),
    Guarded(
        "chat.send",
        NotFound,
        lambda a: list(a.services.chat.send(a.principal, a.data.answered, "let me in")),
    ),
    Guarded(
        "chat.retry", NotFound, lambda a: list(a.services.chat.retry(a.principal, a.data.failed))
    ),
    Guarded(
        "chat.edit",
        NotFound,
        lambda a: list(a.services.chat.edit(a.principal, a.data.answered, a.data.question_id, "x")),
    ),
    Guarded(
        "chat.regenerate",
        NotFound,
        lambda a: list(
            a.services.chat.regenerate(a.principal, a.data.answered, a.data.question_id + 1)
        ),
    ),
    Guarded(
        "conversations.thread",
        NotFound,
        lambda a: a.services.conversations.thread(a.principal, a.data.answered),
    ),
    Guarded(
        "conversations.thumbnail",
        NotFound,
        lambda a: a.services.conversations.thumbnail(a.principal, a.data.image_id),
    ),
    Guarded(
        "conversations.show_branch",
        NotFound,
        lambda a: a.services.conversations.show_branch(
            a.principal, a.data.answered, a.data.question_id
        ),
    ),
    Guarded(
        "chat.needs_retry",
        NotFound,
        lambda a: a.services.chat.needs_retry(a.principal, a.data.failed),
    ),
    Guarded(
        "chat.estimate_next",
        NotFound,
        lambda a: a.services.chat.estimate_next(a.principal, a.data.answered),
    ),
)

# Methods that take a principal but act only on the principal's own account: there is no
# other user's data to reach through them (refresh, list_for and create are checked below;
# check_quota and reserve read the principal's own quota and usage, and reserve writes
# only the principal's own reservation).
OWN_DATA_ONLY = {
    "accounts.refresh",
    "quotas.check_quota",
    "quotas.reserve",
    "conversations.list_for",
    "conversations.create",
    # the owner is a condition of the search's own query; the property test in
    # tests/chat/conversation/test_search.py tries several users and deletions
    "search.search",
    "feedback.of_conversation",  # the principal's own feedback in their own conversation
    "transfer.import_",  # makes a new conversation of the principal's own
    "conversations.listing",  # lists the principal's own
}

SERVICE_CLASSES = {
    "accounts": AccountService,
    "batches": BatchService,
    "usage": UsageService,
    "quotas": QuotaService,
    "conversations": ConversationService,
    "lab": StrategyLab,
    "chat": ChatService,
    "search": ConversationSearch,
    "feedback": FeedbackService,
    "transfer": ConversationTransfer,
}


def test_the_table_names_every_method_that_takes_a_principal() -> None:
    """A new method that takes a principal must join the table (or the own-data list)."""
    taking_principal = {
        f"{service}.{name}"
        for service, cls in SERVICE_CLASSES.items()
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and "principal" in inspect.signature(member).parameters
    }
    assert taking_principal == {g.name for g in GUARDED} | OWN_DATA_ONLY


def strangers_to(world: World, data: Owned) -> st.SearchStrategy[Principal]:
    """Non-admin principals that are not `data`'s owner, under any name they like."""
    others = [u.user_id for u in world.users if u.user_id != data.owner.user_id]
    names = st.sampled_from([u.name for u in world.users] + ["root", "(operator)"]) | st.text(
        min_size=1, max_size=12
    )
    no_account = st.integers(-3, 10**9).filter(lambda i: i not in world.user_ids)
    return st.one_of(
        st.sampled_from([u for u in world.users if u.user_id != data.owner.user_id]),
        st.builds(Principal, user_id=st.sampled_from(others), name=names, role=st.just(Role.USER)),
        st.builds(
            Principal,
            user_id=no_account | st.just(0),  # 0 is the operator's id, here without the role
            name=names,
            role=st.just(Role.USER),
        ),
    )


def assert_refused(world: World, method: Guarded, principal: Principal, data: Owned) -> None:
    before = snapshot(world)
    with pytest.raises((NotFound, PermissionDenied)) as refused:
        method.call(Attempt(world, principal, data))
    assert isinstance(refused.value, method.refusal), (method.name, refused.value)
    assert snapshot(world) == before, f"{method.name} by {principal} changed stored data"


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(GUARDED), data=st.data())
def test_a_principal_without_the_right_is_refused_and_nothing_changes(
    world: World, method: Guarded, data: st.DataObject
) -> None:
    target = data.draw(st.sampled_from(world.owners), label="owner's data")
    principal = data.draw(strangers_to(world, target), label="principal")
    assert_refused(world, method, principal, target)


def test_every_method_refuses_another_user_a_ghost_and_a_borrowed_id(world: World) -> None:
    """Every row at least once, whatever hypothesis drew (one world keeps this fast)."""
    alice_data, bob_data = world.owners
    bob = bob_data.owner
    for method in GUARDED:
        for principal in (
            bob,
            world.carol,
            Principal(user_id=10**6, name="ghost", role=Role.USER),
            Principal(user_id=bob.user_id, name="alice", role=Role.USER),  # bob's id, alice's name
        ):
            assert_refused(world, method, principal, alice_data)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user_id=st.integers(-3, 12),
    name=st.text(min_size=1, max_size=12),
    role=st.sampled_from(Role),
)
def test_refresh_answers_only_for_the_principals_own_account(
    world: World, user_id: int, name: str, role: Role
) -> None:
    """The page re-reads its principal every run: the stored name and role win."""
    fresh = world.services.accounts.refresh(Principal(user_id=user_id, name=name, role=role))
    stored = {u.user_id: u for u in [*world.users, world.admin]}
    assert fresh == stored.get(user_id)


def test_own_data_only_methods_never_show_another_users_conversations(world: World) -> None:
    alice_data, bob_data = world.owners
    alice_conversations = {alice_data.answered, alice_data.failed}
    borrowed = Principal(user_id=bob_data.owner.user_id, name="alice", role=Role.USER)
    for principal in (bob_data.owner, world.carol, borrowed, world.admin, ROOT):
        listed = {c.id for c in world.services.conversations.list_for(principal)}
        assert not listed & alice_conversations
    created = world.services.conversations.create(borrowed, title="borrowed")
    assert created.id in {c.id for c in world.services.conversations.list_for(bob_data.owner)}
    assert {c.id for c in world.services.conversations.list_for(alice_data.owner)} == (
        alice_conversations
    )


# The positive side: the owner, and admins, get what the checks above refuse to others.


def check_owner(world: World, method: str, data: Owned) -> None:
    services, owner = world.services, data.owner
    if method == "conversations.get":
        assert services.conversations.get(owner, data.answered).title == f"{owner.name}'s secrets"
    elif method == "conversations.rename":
        assert services.conversations.rename(owner, data.answered, "renamed").title == "renamed"
        services.conversations.rename(owner, data.answered, f"{owner.name}'s secrets")
    elif method == "conversations.messages":
        contents = [m.content for m in services.conversations.messages(owner, data.answered)]
        assert contents[0] == f"{owner.name}'s private question"
    elif method == "conversations.choose_documents":
        services.conversations.choose_documents(owner, data.answered, [3, 1, 3])
        assert services.conversations.documents_of(owner, data.answered) == [1, 3]
        services.conversations.choose_documents(owner, data.answered, None)
        assert services.conversations.documents_of(owner, data.answered) is None
    elif method == "quotas.stored_quota":
        assert services.quotas.stored_quota(owner, owner.user_id) == data.quota
    elif method == "quotas.quota":
        quota = services.quotas.quota(owner)
        assert (quota.messages_per_day, quota.tokens_per_day) == data.quota
    elif method == "quotas.today":
        # One answered message; the failed one used nothing and is not counted.
        assert services.quotas.today(owner, owner.user_id).messages == 1
    elif method == "lab.strategy_of":
        assert services.lab.strategy_of(owner, data.answered) == "window"
    elif method == "chat.needs_retry":
        assert services.chat.needs_retry(owner, data.failed)
        assert not services.chat.needs_retry(owner, data.answered)
    elif method == "chat.estimate_next":
        assert services.chat.estimate_next(owner, data.answered).input_tokens > 0
    elif method == "chat.send":
        assert "".join(services.chat.send(owner, data.answered, "me again")) == "OK"
    elif method == "conversations.thread":
        thread = services.conversations.thread(owner, data.answered)
        assert thread.messages[0].content == f"{owner.name}'s private question"
    elif method == "conversations.thumbnail":
        assert services.conversations.thumbnail(owner, data.image_id)[0] == "image/png"
    elif method == "chat.regenerate":
        answer = services.conversations.thread(owner, data.answered).messages[1]
        assert "".join(services.chat.regenerate(owner, data.answered, answer.id)) == "OK"
        services.conversations.show_branch(owner, data.answered, answer.id)
        assert services.conversations.thread(owner, data.answered).messages[1].id == answer.id
    else:
        raise AssertionError(method)


OWNER_METHODS = [
    "conversations.get",
    "conversations.rename",
    "conversations.messages",
    "conversations.choose_documents",
    "quotas.stored_quota",
    "quotas.quota",
    "quotas.today",
    "lab.strategy_of",
    "chat.needs_retry",
    "chat.estimate_next",
    "chat.regenerate",
    "conversations.thread",
    "conversations.thumbnail",
    "chat.send",
]


def test_the_owner_may(world: World) -> None:
    for method in OWNER_METHODS:
        for data in world.owners:
            check_owner(world, method, data)


def check_admin(world: World, method: str, admin: Principal, data: Owned) -> None:
    services, owner = world.services, data.owner
    if method == "accounts.create_user":
        name = f"new{next(world.names)}"
        created = services.accounts.create_user(admin, name=name, password="new-password")
        assert services.accounts.find_principal(admin, name) == created
    elif method == "accounts.list_users":
        assert owner.name in [u.name for u in services.accounts.list_users(admin)]
    elif method == "accounts.find_principal":
        assert services.accounts.find_principal(admin, owner.name) == owner
    elif method == "accounts.set_disabled":
        services.accounts.set_disabled(admin, owner.name, disabled=True)
        assert services.accounts.refresh(owner) is None
        services.accounts.set_disabled(admin, owner.name, disabled=False)
        assert services.accounts.refresh(owner) == owner
    elif method == "accounts.set_password":
        password = f"{owner.name}-password"  # set back to what it was
        services.accounts.set_password(admin, owner.name, password)
        assert services.accounts.authenticate(name=owner.name, password=password) == owner
    elif method == "quotas.stored_quota":
        assert services.quotas.stored_quota(admin, owner.user_id) == data.quota
    elif method == "quotas.set_quota":
        services.quotas.set_quota(admin, owner.user_id, messages_per_day=7, tokens_per_day=None)
        assert services.quotas.stored_quota(owner) == (7, None)
        messages, tokens = data.quota
        services.quotas.set_quota(
            admin, owner.user_id, messages_per_day=messages, tokens_per_day=tokens
        )
    elif method == "quotas.today":
        assert services.quotas.today(admin, owner.user_id) == services.quotas.today(owner)
    elif method == "usage.by_user_and_day":
        assert owner.name in {row.user for row in services.usage.by_user_and_day(admin, days=1)}
    elif method == "usage.facts":
        facts = services.usage.facts(admin, since=date(2000, 1, 1), until=date.today())
        assert owner.name in {f.user for f in facts}
    elif method == "usage.report":
        report = services.usage.report(admin, since=date(2000, 1, 1), until=date.today())
        assert owner.name in {r.user for r in report.per_user()}
    elif method == "conversations.messages_of":
        services.review.open(admin, data.answered, "checking the memory strategy")
        assert services.conversations.messages_of(
            admin, data.answered
        ) == services.conversations.messages(owner, data.answered)
    elif method == "conversations.list_all":
        rows = {c.id: c.owner for c in services.conversations.list_all(admin)}
        assert rows[data.answered] == rows[data.failed] == owner.name
    elif method == "lab.strategy_of":
        assert services.lab.strategy_of(admin, data.answered) == "window"
    elif method == "lab.set_conversation_strategy":
        services.lab.set_conversation_strategy(admin, data.answered, "full")
        assert services.lab.strategy_of(owner, data.answered) == "full"
        services.lab.set_conversation_strategy(admin, data.answered, "window")
    elif method == "lab.set_memory_options":
        services.lab.set_memory_options(admin, data.answered, "window", {"turns": 3})
        assert services.lab.options_of(admin, data.answered, "window").overrides == {"turns": 3}
        services.lab.set_memory_options(admin, data.answered, "window", None)
    elif method == "lab.options_of":
        assert services.lab.options_of(admin, data.answered, "window").overrides == {}
    elif method == "lab.replay_context":
        services.review.open(admin, data.answered, "checking the memory strategy")
        context, _ = services.lab.replay_context(admin, data.answered, data.question_id, "full")
        assert context.strategy == "full"
        assert context.messages[-1].content.endswith(f"{owner.name}'s private question")
    elif method == "batches.jobs":
        assert [j.kind for j in services.batches.jobs(admin)] == []  # none submitted here
    else:
        raise AssertionError(method)


ADMIN_METHODS = [
    "accounts.create_user",
    "accounts.list_users",
    "accounts.find_principal",
    "accounts.set_disabled",
    "accounts.set_password",
    "quotas.stored_quota",
    "quotas.set_quota",
    "quotas.today",
    "usage.by_user_and_day",
    "usage.facts",
    "usage.report",
    "conversations.messages_of",
    "conversations.list_all",
    "lab.strategy_of",
    "lab.set_conversation_strategy",
    "lab.options_of",
    "lab.set_memory_options",
    "lab.replay_context",
    "batches.jobs",
]


def test_an_admin_may(world: World) -> None:
    for method in ADMIN_METHODS:
        for admin in (ROOT, world.admin):
            for data in world.owners:
                check_admin(world, method, admin, data)


def test_estimate_next_checks_the_owner_even_for_a_free_model(world: World) -> None:
    world.scripted.model = "scripted"  # no price: the estimate is skipped
    alice_data, bob_data = world.owners
    with pytest.raises(NotFound):
        world.services.chat.estimate_next(bob_data.owner, alice_data.answered)
