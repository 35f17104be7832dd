"""Full-text search over one's own conversations (SQLite FTS5 here; PostgreSQL in
tests/store/test_postgres.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.chat.conversation.search import CLOSE, OPEN, marked, terms_of
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.config import Settings
from parley.core.domain import MessageRole, Principal, Role
from parley.core.errors import InvalidInput, NotFound, Overloaded
from parley.wiring.services import Services
from tests.chat.oversight.test_erasure import files_holding
from tests.support import ROOT


def say(services: Services, who: Principal, text: str, conversation_id: int | None = None) -> int:
    reply = services.chat.send(who, conversation_id, text)
    list(reply)
    return reply.conversation_id


def test_finds_own_messages_and_titles_with_the_match_marked(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Lisbon has trams and custard tarts.", "Porto has port.")
    lisbon = say(services, alice, "Plan a weekend in Lisbon")
    say(services, alice, "And what about Porto?", lisbon)
    services.conversations.rename(alice, lisbon, "Portugal trip")
    other = say(services, alice, "Something else entirely")

    hits = services.search.search(alice, "custard")
    assert [(h.conversation_id, h.role) for h in hits] == [(lisbon, MessageRole.ASSISTANT)]
    (hit,) = hits
    assert hit.title == "Portugal trip"
    assert [hit.snippet[a:b] for a, b in hit.marks] == ["custard"]

    titled = services.search.search(alice, "portugal")
    assert titled[0].message_id is None and titled[0].conversation_id == lisbon
    assert [titled[0].snippet[a:b] for a, b in titled[0].marks] == ["Portugal"]
    # Every word must occur; a word typed in part finds the whole (no stemming, which
    # would make "runn" no prefix of the stem "run").
    scripted.enqueue("Running water.")
    say(services, alice, "Rivers", other_conversation := say(services, alice, "Straße"))
    assert {h.conversation_id for h in services.search.search(alice, "runn")} == {
        other_conversation
    }
    assert services.search.search(alice, "Straße")[0].conversation_id == other_conversation
    assert {h.conversation_id for h in services.search.search(alice, "weekend lisb")} == {lisbon}
    assert services.search.search(alice, "weekend entirely") == []
    assert {h.message_id for h in services.search.search(alice, "trams")} == {
        h.message_id for h in services.search.search(alice, "tram")
    }
    assert services.search.search(alice, "entire")[0].conversation_id == other


@pytest.mark.parametrize("query", ["", "   ", "!!! ???", "__", OPEN + CLOSE, "x" * 501])
def test_a_query_without_words_gets_a_sentence(
    services: Services, alice: Principal, query: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        services.search.search(alice, query)
    assert refused.value.user_message.endswith(".")


def test_query_syntax_is_taken_as_words() -> None:
    assert terms_of('NEAR(a b) "quoted" OR col:x* -not') == [
        "near",
        "a",
        "b",
        "quoted",
        "or",
        "col",
        "x",
        "not",
    ]
    assert marked(f"one {OPEN}two{CLOSE} three") == ("one two three", ((4, 7),))


def test_a_retried_failure_and_an_erased_conversation_are_not_found(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue_error(Overloaded("overloaded"), chunks=["halfway pelican"])
    conversation = services.chat.send(alice, None, "Tell me about birds")
    list(conversation)
    scripted.enqueue("Herons wade.")
    list(services.chat.retry(alice, conversation.conversation_id))
    assert services.search.search(alice, "pelican") == []  # superseded by the retry
    assert [h.role for h in services.search.search(alice, "herons")] == [MessageRole.ASSISTANT]
    services.conversations.delete(alice, conversation.conversation_id)
    assert services.search.search(alice, "herons") == []
    assert services.search.search(alice, "birds") == []


def test_erasing_a_conversation_leaves_no_byte_of_its_words_in_the_search_index(
    services: Services, scripted: ScriptedProvider, alice: Principal, settings: Settings
) -> None:
    marker = "qxzjv7731"  # one token, sharing no prefix with another word here
    scripted.enqueue("Noted.", "Noted.")
    doomed = say(services, alice, f"Remember {marker} please")
    kept = say(services, alice, "Keep this one about gardens")
    services._database.reclaim()  # the log in the file: the control below sees the index
    assert files_holding(Path(settings.data_dir), marker), "the index never held the word"
    services.conversations.delete(alice, doomed)
    assert files_holding(Path(settings.data_dir), marker) == []
    assert {h.conversation_id for h in services.search.search(alice, "gardens")} == {kept}


_names = itertools.count()
WORDS = ["apple", "river", "candle", "meadow", "copper", "lantern"]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(  # per user: conversations, each a list of words said, and kept or not
        st.lists(
            st.tuples(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), st.booleans()),
            min_size=1,
            max_size=3,
        ),
        min_size=2,
        max_size=4,
    )
)
def test_no_search_ever_returns_another_users_conversation(
    services: Services, scripted: ScriptedProvider, plan: list[list[tuple[list[str], bool]]]
) -> None:
    scripted.default_answer = "Understood."
    users = [
        services.accounts.create_user(
            ROOT, name=f"user{next(_names)}", password="a-long-password", role=Role.USER
        )
        for _ in plan
    ]
    said: dict[int, dict[int, set[str]]] = {}  # user -> live conversation -> words
    for user, conversations in zip(users, plan, strict=True):
        said[user.user_id] = {}
        for words, kept in conversations:
            conversation_id = say(services, user, " ".join(words))
            if kept:
                said[user.user_id][conversation_id] = set(words)
            else:
                services.conversations.delete(user, conversation_id)
    for user in users:
        mine = said[user.user_id]
        for word in WORDS:
            hits = services.search.search(user, word, limit=100)
            found = {h.conversation_id for h in hits}
            assert found <= set(mine), "a hit outside the user's live conversations"
            for hit in hits:
                services.conversations.get(user, hit.conversation_id)  # theirs: no NotFound
            assert found == {c for c, words in mine.items() if word in words}
        for other in users:
            if other.user_id != user.user_id:
                for conversation_id in said[other.user_id]:
                    with pytest.raises(NotFound):
                        services.conversations.get(user, conversation_id)
