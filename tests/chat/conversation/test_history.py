"""The history cache reads only what is new on the branch, and notices every other change."""

from __future__ import annotations

from parley.chat.conversation.history import HistoryCache, path_turns
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal
from parley.core.errors import StreamInterrupted
from parley.store.models import Conversation
from parley.wiring.services import Services


def cached(services: Services, cache: HistoryCache, conversation_id: int) -> list[int]:
    with services._database.session() as session:
        conversation = session.get(Conversation, conversation_id)
        assert conversation is not None
        return [t.id for t in cache.turns(session, conversation, conversation.active_leaf_id)]


def fresh(services: Services, conversation_id: int) -> list[int]:
    with services._database.session() as session:
        conversation = session.get(Conversation, conversation_id)
        assert conversation is not None
        return [t.id for t in path_turns(session, conversation.active_leaf_id)]


def test_new_turns_are_appended_and_match_a_full_read(services: Services, alice: Principal) -> None:
    cache = HistoryCache()
    reply = services.chat.send(alice, None, "first")
    list(reply)
    conversation = reply.conversation_id
    assert cached(services, cache, conversation) == fresh(services, conversation)
    for text in ("second", "third"):
        list(services.chat.send(alice, conversation, text))
        assert cached(services, cache, conversation) == fresh(services, conversation)
    assert len(fresh(services, conversation)) == 6


def test_a_superseded_answer_leaves_the_cached_history(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    cache = HistoryCache()
    scripted.enqueue_error(StreamInterrupted(partial_text="Half an"), chunks=["Half an"])
    scripted.enqueue_error(StreamInterrupted(partial_text="x"))  # the continuation fails too
    reply = services.chat.send(alice, None, "question")
    list(reply)
    conversation = reply.conversation_id
    before = cached(services, cache, conversation)
    assert len(before) == 2  # the question and the partial answer
    list(services.chat.retry(alice, conversation))  # supersedes the partial answer
    after = cached(services, cache, conversation)
    assert after == fresh(services, conversation)
    assert before[1] not in after and len(after) == 2


def test_a_turn_added_by_another_process_is_read(services: Services, alice: Principal) -> None:
    ours, theirs = HistoryCache(), HistoryCache()  # two processes' caches
    reply = services.chat.send(alice, None, "first")
    list(reply)
    conversation = reply.conversation_id
    assert len(cached(services, ours, conversation)) == 2
    list(services.chat.send(alice, conversation, "second"))
    assert len(cached(services, theirs, conversation)) == 4
    list(services.chat.send(alice, conversation, "third"))
    assert cached(services, ours, conversation) == fresh(services, conversation)
    assert len(fresh(services, conversation)) == 6


def test_a_deleted_conversations_id_given_again_brings_back_nothing(
    services: Services, alice: Principal, bob: Principal
) -> None:
    cache = HistoryCache()
    old = services.chat.send(alice, None, "alice's secret plan")
    list(old)
    assert len(cached(services, cache, old.conversation_id)) == 2
    services.conversations.delete(alice, old.conversation_id)
    new = services.chat.send(bob, None, "bob's question")
    list(new)
    # SQLite gives the highest id again after a delete; either way nothing of alice's shows.
    with services._database.session() as session:
        row = session.get(Conversation, new.conversation_id)
        assert row is not None
        texts = [t.content for t in cache.turns(session, row, row.active_leaf_id)]
    assert texts == ["bob's question", "OK"]
