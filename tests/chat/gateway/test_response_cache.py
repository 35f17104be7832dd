"""The response cache: a low-temperature question asked again costs no call, is stored
and shown like any answer (marked, at no cost), and the ledger records the hit and what
it saved; an answer never reaches anyone who could not have produced it, and goes when
a document it drew on changes, when it expires, and with its conversation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.chat.gateway.response_cache import CacheSettings, ResponseCache
from parley.core.config import Settings
from parley.core.domain import Principal, Purpose
from parley.core.errors import StorageConflict
from parley.core.llm import CacheKey, ChatRequest, Citation, Usage
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.models import CachedResponse, UsageEntry
from parley.wiring.services import Services, build_services
from tests.chat.oversight.test_erasure import files_holding
from tests.support import ROOT


def cold(settings: Settings, **cache: object) -> Settings:
    """Chat at temperature 0, the cache's default threshold."""
    return settings.model_copy(
        update={
            "temperature": settings.temperature.model_copy(update={"chat": 0.0}),
            "response_cache": settings.response_cache.model_copy(update=cache),
        }
    )


@pytest.fixture
def cached(services: Services, scripted: ScriptedProvider, tmp_path: Path) -> Services:
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "v"))
    return build_services(
        cold(services.settings),
        provider=scripted,
        background=services.background,
        document_index=index,
    )


def ask(services: Services, user: Principal, text: str) -> tuple[str, int]:
    reply = services.chat.send(user, None, text)
    answer = "".join(reply)
    assert reply.result is not None and reply.result.ok
    return answer, reply.conversation_id


def chat_calls(scripted: ScriptedProvider) -> int:
    return sum(1 for r in scripted.requests if r.meta.purpose is Purpose.CHAT)


def ledger(services: Services) -> list[tuple[str | None, int, int, float]]:
    with services._database.session() as session:
        rows = session.execute(
            select(
                UsageEntry.cache,
                UsageEntry.input_tokens,
                UsageEntry.saved_output_tokens,
                UsageEntry.cost_usd,
            )
            .where(UsageEntry.purpose == Purpose.CHAT)
            .order_by(UsageEntry.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_the_same_question_twice_costs_one_call_and_is_marked_cached(
    cached: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.enqueue("Paris, ", "on the Seine.")
    first, _ = ask(cached, alice, "What is the capital of France?")
    second, cid = ask(cached, alice, "What is the capital   of France?")  # spacing aside
    assert first == second == "Paris, on the Seine."
    assert chat_calls(scripted) == 1
    (question, answer) = cached.conversations.thread(alice, cid).messages
    assert answer.cached and not answer.cost_usd and answer.content == first
    (miss, hit) = ledger(cached)
    assert miss[0] == "miss" and miss[1] > 0
    assert hit[0] == "hit" and hit[1] == 0 and hit[2] == 2  # no input used; 2 chunks saved
    assert hit[3] == 0.0


def test_no_cache_above_the_temperature_threshold_or_for_answer_again(
    services: Services, cached: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    warm = build_services(services.settings, provider=scripted, background=services.background)
    assert warm.settings.temperature.chat > warm.settings.response_cache.max_temperature
    ask(warm, alice, "Hello there")
    ask(warm, alice, "Hello there")
    assert chat_calls(scripted) == 2 and [c for c, *_ in ledger(warm)] == [None, None]
    _, cid = ask(cached, alice, "Tell me a story")
    answer = cached.conversations.thread(alice, cid).messages[1]
    list(cached.chat.regenerate(alice, cid, answer.id))  # "Answer again" wants another
    assert chat_calls(scripted) == 4


def test_a_longer_conversation_is_another_context(
    cached: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    _, cid = ask(cached, alice, "Name a colour")
    list(cached.chat.send(alice, cid, "Name a colour"))  # the history differs now
    assert chat_calls(scripted) == 2


USERS = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["Q1", "Q2", "What does the memo say?"])),
    min_size=2,
    max_size=8,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(asks=USERS, shared=st.booleans())
def test_no_user_ever_gets_an_answer_written_for_another(
    cached: Services, scripted: ScriptedProvider, asks: list[tuple[int, str]], shared: bool
) -> None:
    """Three users, one in the memo's group when it is shared, ask questions in any
    order; every answer names the user it was written for (the scripted model writes
    the asker's id into it), so a cached answer served to another would show."""
    accounts = cached.accounts
    names = [f"u{n}-{datetime.now(UTC).timestamp()}".replace(".", "") for n in range(3)]
    users = [accounts.create_user(ROOT, name=n, password="password-123") for n in names]
    group = f"g{names[0]}"
    cached.groups.create(ROOT, group)
    cached.groups.assign(ROOT, group, users[0].name)
    cached.groups.assign(ROOT, group, users[1].name)
    memo = cached.documents.add(users[1], f"{names[1]}.md", b"# Memo\n\nThe memo says hello.\n")
    if shared:
        cached.documents.share(users[1], memo.id, group=group)
    scripted.on_request = lambda r: scripted.enqueue(f"for user {r.meta.user_id}")
    try:
        for who, question in asks:
            answer, _ = ask(cached, users[who], question)
            assert answer == f"for user {users[who].user_id}", (who, question, answer)
    finally:
        scripted.on_request = None


def test_a_changed_document_drops_the_answers_that_drew_on_it(
    cached: Services, scripted: ScriptedProvider, alice: Principal, bob: Principal
) -> None:
    group = "readers"
    cached.groups.create(ROOT, group)
    cached.groups.assign(ROOT, group, "bob")
    cached.groups.assign(ROOT, group, "alice")
    memo = cached.documents.add(alice, "memo.md", b"# Memo\n\nThe vault opens at nine.\n")
    cached.documents.share(alice, memo.id, group=group)
    ask(cached, bob, "When does the vault open?")
    ask(cached, bob, "When does the vault open?")
    assert chat_calls(scripted) == 1  # the second from the cache
    ask(cached, bob, "When does the vault open?")
    assert chat_calls(scripted) == 1  # still the cache's, while the memo is shared
    cached.documents.unshare(alice, memo.id, group=group)
    ask(cached, bob, "When does the vault open?")  # no passage now: asked afresh
    assert chat_calls(scripted) == 2
    with cached._database.session() as session:
        drew = session.scalar(
            select(func.count(CachedResponse.id)).where(CachedResponse.documents > 0)
        )
    assert drew == 0  # the answer that drew on the memo is gone


def test_an_answer_goes_with_its_conversation(
    cached: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    _, cid = ask(cached, alice, "Something to forget")
    cached.conversations.delete(alice, cid)
    ask(cached, alice, "Something to forget")
    assert chat_calls(scripted) == 2


def test_an_expired_or_cut_short_answer_is_not_served(services: Services, alice: Principal) -> None:
    now = [datetime(2026, 12, 4, tzinfo=UTC)]
    cache = ResponseCache(
        services._database, CacheSettings(ttl_s=60, semantic_threshold=2), clock=lambda: now[0]
    )
    key = CacheKey(scope="s", context="c", question="q")
    cache.keep(
        key,
        user_id=alice.user_id,
        conversation_id=None,
        model="m",
        text="kept",
        citations=[(2, Citation(0, "quoted", 0, 1))],
        stop_reason="end_turn",
        usage=Usage(input_tokens=10, output_tokens=3),
    )
    hit = cache.find(key)
    assert hit is not None and hit.text == "kept" and hit.saved.input_tokens == 10
    assert hit.citations[0]["at"] == 2
    assert cache.find(CacheKey(scope="other", context="c", question="q")) is None
    now[0] += timedelta(seconds=61)
    assert cache.find(key) is None
    assert cache.drop_expired() == 1


def test_a_near_question_in_the_same_context_is_a_semantic_hit(
    services: Services, alice: Principal
) -> None:
    embedder = HashingEmbedder()
    cache = ResponseCache(
        services._database,
        CacheSettings(ttl_s=60, semantic_threshold=0.8),
        embed=lambda q: embedder.embed([q])[0],
    )
    asked = CacheKey(scope="s", context="c", question="what is the capital city of france")
    cache.keep(
        asked,
        user_id=alice.user_id,
        conversation_id=None,
        model="m",
        text="Paris.",
        citations=[],
        stop_reason="end_turn",
        usage=Usage(input_tokens=10, output_tokens=3),
    )
    near = CacheKey(scope="s", context="c", question="what is the capital city of france ?")
    other = CacheKey(scope="s", context="c", question="how tall is the eiffel tower today")
    elsewhere = CacheKey(scope="s", context="d", question=near.question)
    assert cache.find(near) is not None
    assert cache.find(other) is None
    assert cache.find(elsewhere) is None  # another context: never


def test_a_continuation_is_never_answered_from_the_cache(
    cached: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    from parley.core.errors import StreamInterrupted

    scripted.enqueue_error(StreamInterrupted("cut", partial_text="Half"), chunks=["Half"])
    scripted.enqueue(" and the rest.")
    answer, _ = ask(cached, alice, "Tell me everything")
    continuation = [r for r in scripted.requests if r.meta.purpose is Purpose.CONTINUATION]
    assert continuation and all(r.meta.cache is None for r in continuation)
    assert answer.startswith("Half")


def test_a_title_is_written_once_for_the_same_exchange(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    """Titles are deterministic by nature: cached whatever the chat temperature."""
    titled = build_services(
        services.settings.model_copy(update={"model_titles": True}),
        provider=scripted,
        background=services.background,
    )

    def answer(request: ChatRequest) -> None:
        if request.meta.purpose is Purpose.TITLE:
            scripted.enqueue('{"title": "Rivers of France"}')
        else:
            scripted.enqueue("The Seine and the Loire.")

    scripted.on_request = answer
    first = ask(titled, alice, "Which rivers cross France?")[1]
    second = ask(titled, alice, "Which rivers cross France?")[1]
    titles = [r for r in scripted.requests if r.meta.purpose is Purpose.TITLE]
    assert len(titles) == 1 and chat_calls(scripted) == 2  # chat at 0.7: not cached
    assert {titled.conversations.get(alice, c).title for c in (first, second)} == {
        "Rivers of France"
    }


@pytest.fixture
def native(services: Services, tmp_path: Path) -> tuple[Services, ScriptedProvider]:
    scripted = ScriptedProvider(native_citations=True)
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "n"))
    built = build_services(
        cold(services.settings),
        provider=scripted,
        background=services.background,
        document_index=index,
    )
    return built, scripted


def test_a_cached_answer_keeps_its_citations_in_place(
    native: tuple[Services, ScriptedProvider], alice: Principal
) -> None:
    services, scripted = native
    services.documents.add(alice, "a.md", b"Alpha is the first letter.")
    scripted.enqueue("Alpha", Citation(0, "Alpha is the first letter.", 0, 1), " leads.")
    first = ask(services, alice, "Which letter is first, alpha?")[1]
    second = ask(services, alice, "Which letter is first, alpha?")[1]
    assert chat_calls(scripted) == 1
    kept, served = (services.conversations.messages(alice, c)[-1] for c in (first, second))
    assert served.cached and served.content == kept.content == "Alpha leads."
    assert (
        [(c.n, c.offset, c.cited_text) for c in served.citations]
        == [(c.n, c.offset, c.cited_text) for c in kept.citations]
        == [(1, len("Alpha"), "Alpha is the first letter.")]
    )


@pytest.mark.parametrize("how", ["deleted", "owner erased"])
def test_a_deleted_or_erased_document_leaves_no_cached_quote(
    native: tuple[Services, ScriptedProvider], alice: Principal, bob: Principal, how: str
) -> None:
    services, scripted = native
    marker = "OPAL-HARBOUR-6613"
    memo = services.documents.add(alice, "memo.md", f"# Memo\n\nThe code is {marker}.\n".encode())
    services.documents.share(alice, memo.id, public=True)
    # The answer's own words hold no marker; its quote of the memo does.
    scripted.enqueue("It is in the memo", Citation(0, f"The code is {marker}.", 0, 1), ".")
    ask(services, bob, "What is the code in the memo?")
    with services._database.session() as session:
        assert session.scalar(select(func.count(CachedResponse.id))) == 1
    data_dir = services.settings.data_dir
    assert files_holding(data_dir, marker)
    if how == "deleted":
        services.documents.delete(alice, memo.id)
    else:
        services.erasure.erase_user(ROOT, "alice")
    with services._database.session() as session:
        assert session.scalar(select(func.count(CachedResponse.id))) == 0
    assert files_holding(data_dir, marker) == []  # no byte of the quote, anywhere


def test_with_the_cache_off_titles_are_written_each_time(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    off = services.settings.model_copy(
        update={
            "model_titles": True,
            "response_cache": services.settings.response_cache.model_copy(
                update={"enabled": False}
            ),
        }
    )
    titled = build_services(
        cold(off, enabled=False), provider=scripted, background=services.background
    )
    scripted.on_request = lambda r: scripted.enqueue(
        '{"title": "Rivers of France"}' if r.meta.purpose is Purpose.TITLE else "Rivers."
    )
    ask(titled, alice, "Which rivers cross France?")
    ask(titled, alice, "Which rivers cross France?")
    titles = [r for r in scripted.requests if r.meta.purpose is Purpose.TITLE]
    assert len(titles) == 2 and chat_calls(scripted) == 2
    assert all(r.meta.cache is None for r in scripted.requests)


def test_joining_a_group_is_another_scope(
    cached: Services, scripted: ScriptedProvider, bob: Principal
) -> None:
    ask(cached, bob, "What is new?")
    cached.groups.create(ROOT, "news")
    cached.groups.assign(ROOT, "news", "bob")
    ask(cached, bob, "What is new?")
    assert chat_calls(scripted) == 2


def test_a_count_through_the_api_is_no_miss_and_a_hit_asks_none(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    counting = build_services(
        cold(services.settings).model_copy(update={"anthropic_count_tokens": True}),
        provider=scripted,
        background=services.background,
    )
    ask(counting, alice, "Count me in")
    ask(counting, alice, "Count me in")
    with counting._database.session() as session:
        rows = session.execute(
            select(UsageEntry.purpose, UsageEntry.cache).order_by(UsageEntry.id)
        ).all()
    assert [(str(p), c) for p, c in rows] == [
        ("count_tokens", None),
        ("chat", "miss"),
        ("chat", "hit"),  # no count asked of the API for it
    ]


def test_an_answer_kept_meanwhile_by_another_ask_costs_nothing(
    cached: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(*_args: object, **_kwargs: object) -> None:
        raise StorageConflict("unique: exact")

    monkeypatch.setattr(cached.response_cache, "keep", conflict)
    answer, cid = ask(cached, alice, "Race me")
    assert answer == "OK" and cached.conversations.thread(alice, cid).messages[1].content == "OK"
