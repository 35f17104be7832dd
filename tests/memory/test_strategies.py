"""Memory strategies: the registry, budgets, summaries, recall and provenance."""

from __future__ import annotations

import importlib
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import MessageRole, Principal, Role
from parley.core.errors import ConfigurationError, InvalidInput, PermissionDenied
from parley.memory.base import ContextRequest, ContextWindow, MemoryStrategy, Turn, turn_tokens
from parley.memory.registry import MemoryDeps, StrategyRegistry, available
from parley.memory.summaries import (
    ExtractiveSummarizer,
    RollingSummary,
    Summarizer,
    Summary,
    SummaryDraft,
    SummaryStore,
)
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.turn_recall import RecallIndex
from parley.store.db import Database
from parley.store.models import Message
from parley.wiring.services import Services, build_services
from tests.support import ROOT

BUILT_INS = {"full", "window", "token_window", "summary_buffer", "vector_recall", "hybrid"}


def deps_for(database: Database) -> MemoryDeps:
    return MemoryDeps(
        summaries=SummaryStore(database),
        summarizer=ExtractiveSummarizer(),
        recall_factory=lambda: RecallIndex(embedder=HashingEmbedder(), store=None),
    )


def registry_for(settings: Settings, database: Database) -> StrategyRegistry:
    return StrategyRegistry(
        deps_for(database), default=settings.memory_strategy, options=settings.memory_options()
    )


@pytest.fixture
def registry(settings: Settings, database: Database) -> StrategyRegistry:
    return registry_for(settings, database)


@pytest.fixture
def conversation_id(services: Services, alice: Principal) -> int:
    return services.conversations.create(alice, title="memory").id


def chat_turns(count: int, *, needle_at: int | None = None) -> list[Turn]:
    turns = []
    for i in range(1, count + 1):
        text = f"Turn {i}: we talked about the weather and the garden, nothing special."
        if i == needle_at:
            text = "My dog is called Biscuit and she loves chasing seagulls on the beach."
        turns.append(Turn(id=i, role="user" if i % 2 else "assistant", content=text))
    return turns


def ask(
    strategy: MemoryStrategy, conversation_id: int, history: list[Turn], question: str, budget: int
) -> ContextWindow:
    return strategy.build(
        ContextRequest(
            conversation_id=conversation_id,
            system="Be helpful.",
            history=history,
            question=question,
            budget=budget,
        )
    )


def test_built_ins_are_registered_through_entry_points(registry: StrategyRegistry) -> None:
    assert set(available()) >= BUILT_INS
    assert set(registry.names()) >= BUILT_INS
    for name in BUILT_INS:
        assert registry.get(name).name == name
    with pytest.raises(InvalidInput, match="no memory strategy named 'nope'"):
        registry.get("nope")


def test_an_unknown_default_is_a_configuration_error(
    settings: Settings, database: Database
) -> None:
    wrong = settings.model_copy(update={"memory_strategy": "nope"})
    with pytest.raises(ConfigurationError, match="PARLEY_MEMORY_STRATEGY"):
        registry_for(wrong, database)


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[str]:
    """A strategy installed by another package: a module plus an entry point in its metadata."""
    site = tmp_path / "site"
    (site / "parley_echo-1.0.dist-info").mkdir(parents=True)
    (site / "parley_echo-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: parley-echo\nVersion: 1.0\n"
    )
    (site / "parley_echo-1.0.dist-info" / "entry_points.txt").write_text(
        "[parley.memory_strategies]\necho_last = parley_echo:EchoLast\n"
    )
    (site / "parley_echo.py").write_text(
        textwrap.dedent("""
        from parley.memory import assemble

        class EchoLast:
            name = "echo_last"

            def __init__(self, deps):
                self.observed = []

            def observe(self, conversation_id, history):
                self.observed.append((conversation_id, len(history)))

            def build(self, request):
                return assemble(strategy=self.name, system_prompt=request.system, summary=None,
                                window=list(request.history[-1:]) if request.history and
                                request.history[-1].role == "user" else [],
                                recalled=(), question=request.question, budget=request.budget)
    """)
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield "echo_last"
    sys.path.remove(str(site))
    sys.modules.pop("parley_echo", None)
    importlib.invalidate_caches()


@pytest.mark.usefixtures("database")
def test_a_third_party_strategy_is_chosen_by_name(
    third_party: str, settings: Settings, scripted: ScriptedProvider
) -> None:
    assert third_party in available()
    chosen = settings.model_copy(update={"memory_strategy": third_party})
    services = build_services(chosen, provider=scripted, background=BackgroundWork(workers=0))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    reply = services.chat.send(alice, None, "hello")
    list(reply)
    assert reply.context.strategy == third_party
    plugin = services.memory.get(third_party)
    assert getattr(plugin, "observed", None) == [(reply.conversation_id, 2)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(BUILT_INS - {"full"})),
    lengths=st.lists(st.integers(1, 120), min_size=0, max_size=30),
    budget=st.integers(80, 2500),
)
def test_no_strategy_exceeds_its_budget(
    registry: StrategyRegistry, name: str, lengths: list[int], budget: int
) -> None:
    history = [
        Turn(id=i + 1, role="user" if i % 2 == 0 else "assistant", content="word " * n)
        for i, n in enumerate(lengths)
    ]
    strategy = registry.get(name)
    strategy.observe(7, history)
    context = ask(strategy, 7, history, "What did we say?", budget)
    assert context.total_tokens <= budget
    assert context.messages[-1].role == "user"
    assert context.messages[0].role == "user"
    assert set(context.turn_ids) <= {t.id for t in history}


def test_full_fails_clearly_when_over_budget(registry: StrategyRegistry) -> None:
    history = chat_turns(40)
    whole = ask(registry.get("full"), 1, history, "q", 100_000)
    assert whole.turn_ids == tuple(range(1, 41))
    with pytest.raises(InvalidInput, match="`full` memory strategy"):
        ask(registry.get("full"), 1, history, "q", 300)


def test_window_keeps_the_last_n_turns(registry: StrategyRegistry) -> None:
    context = ask(registry.get("window"), 1, chat_turns(20), "q", 5000)
    assert context.turn_ids == (15, 16, 17, 18, 19, 20)


def test_summary_buffer_folds_into_versions_and_keeps_the_prefix_stable(
    registry: StrategyRegistry, conversation_id: int, settings: Settings
) -> None:
    strategy = registry.get("summary_buffer")
    history: list[Turn] = []
    prefixes = []
    versions = []
    covered = []  # after each turn: the last turn id the summary covers (0: none yet)
    for turn in chat_turns(400):
        history.append(turn)
        strategy.observe(conversation_id, history)
        context = ask(strategy, conversation_id, history, "What now?", 2000)
        # The cached prefix: the system prompt, and the summary's message when there is one.
        cached = tuple(m.content for m in context.messages if m.cache)
        assert len(cached) <= 1 and all(not m.cache for m in context.messages[1:])
        prefixes.append((context.system, *cached))
        versions.append(context.summary_version)
        covered.append(context.summary_covers[1] if context.summary_covers else 0)
    folds = [v for i, v in enumerate(versions) if v is not None and versions[i - 1] != v]
    assert folds == list(range(1, len(folds) + 1)) and len(folds) >= 2
    for i in range(1, len(prefixes)):  # the prefix changes exactly when a fold happens
        assert (prefixes[i] != prefixes[i - 1]) == (versions[i] != versions[i - 1])
    last = ask(strategy, conversation_id, history, "What now?", 2000)
    assert last.summary_covers is not None
    first, covered_to = last.summary_covers
    assert first == 1
    assert all(t > covered_to for t in last.turn_ids)
    assert last.system == "Be helpful."  # the operator's text alone
    assert last.messages[0].cache and "<conversation_summary_" in last.messages[0].content
    # The settings' threshold decides the folds: unsummarized turns never pile up past
    # `memory_fold_tokens`, a fold happens only once they do, and it leaves at most half.
    fold = settings.memory_fold_tokens
    sizes = [turn_tokens(t) for t in history]  # turn ids are 1..400, in order

    def unsummarized(step: int, covered_to: int) -> int:
        return sum(sizes[covered_to:step])  # turns covered_to+1 .. step

    for step in range(1, len(history) + 1):
        now, before = covered[step - 1], covered[step - 2] if step > 1 else 0
        assert unsummarized(step, now) <= fold
        if now != before:
            assert unsummarized(step, before) > fold
            assert unsummarized(step, now) <= fold // 2
    # Replaying an early turn (the strategy lab) sees no summary of later turns.
    early = ask(strategy, conversation_id, history[: covered_to - 1], "What now?", 2000)
    assert early.summary_covers is None or early.summary_covers[1] < covered_to


def test_hybrid_recalls_an_old_relevant_turn_with_provenance(
    registry: StrategyRegistry, conversation_id: int
) -> None:
    history = chat_turns(300, needle_at=11)
    strategy = registry.get("hybrid")
    strategy.observe(conversation_id, history)
    context = ask(strategy, conversation_id, history, "What is my dog called?", 1500)
    assert 11 in context.turn_ids
    assert "Biscuit" in context.messages[-1].content
    assert 11 in [r.turn_id for r in context.recalled]
    assert 300 in context.turn_ids  # the recent window
    assert context.strategy == "hybrid"
    assert sum(context.section_tokens.values()) == context.total_tokens <= 1500
    assert context.messages[-1].content.endswith("What is my dog called?")


def test_token_window_misses_what_hybrid_recalls(
    registry: StrategyRegistry, conversation_id: int
) -> None:
    history = chat_turns(300, needle_at=11)
    context = ask(registry.get("token_window"), conversation_id, history, "dog name?", 1500)
    assert 11 not in context.turn_ids


def test_answers_store_the_context_provenance(services: Services, alice: Principal) -> None:
    list(services.chat.send(alice, None, "first"))
    reply = services.chat.send(alice, None, "second")
    list(reply)
    with services._database.session() as session:
        answer = session.scalars(
            select(Message).where(Message.role == MessageRole.ASSISTANT).order_by(Message.id.desc())
        ).first()
    assert answer is not None and answer.context is not None
    assert answer.context.strategy == "token_window"  # typed on the way out of the store
    assert answer.context.total_tokens == reply.context.total_tokens
    assert answer.context.section_tokens["question"] > 0


def test_admins_choose_a_strategy_per_conversation(services: Services, alice: Principal) -> None:
    admin = services.accounts.create_user(
        ROOT, name="root", password="root-password", role=Role.ADMIN
    )
    reply = services.chat.send(alice, None, "hello")
    list(reply)
    with pytest.raises(PermissionDenied):
        services.lab.set_conversation_strategy(alice, reply.conversation_id, "window")
    with pytest.raises(InvalidInput):
        services.lab.set_conversation_strategy(admin, reply.conversation_id, "nope")
    services.lab.set_conversation_strategy(admin, reply.conversation_id, "window")
    assert services.lab.strategy_of(admin, reply.conversation_id) == "window"
    follow = services.chat.send(alice, reply.conversation_id, "again")
    list(follow)
    assert follow.context.strategy == "window"
    with pytest.raises(PermissionDenied):  # alice's words: a reason first (break-glass)
        services.lab.replay_context(admin, reply.conversation_id, follow.user_message_id, "full")
    services.review.open(admin, reply.conversation_id, "Comparing memory strategies")
    context, estimate = services.lab.replay_context(
        admin, reply.conversation_id, follow.user_message_id, "full"
    )
    assert context.strategy == "full" and estimate.input_tokens == context.total_tokens
    with pytest.raises(PermissionDenied):
        services.lab.replay_context(alice, reply.conversation_id, follow.user_message_id, "full")


@pytest.mark.usefixtures("database")
def test_deleting_a_conversation_drops_its_vectors(
    settings: Settings, scripted: ScriptedProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parley.retrieval.vector_store import VectorStore
    from parley.wiring import services as wiring

    store = VectorStore.persistent(tmp_path / "chroma")
    chosen = settings.model_copy(update={"memory_strategy": "vector_recall"})
    monkeypatch.setattr(
        wiring,
        "build_recall_index",
        lambda _settings, alive=None: RecallIndex(
            embedder=HashingEmbedder(), store=store, alive=alive
        ),
    )
    services = build_services(chosen, provider=scripted, background=BackgroundWork(workers=0))
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    reply = services.chat.send(alice, None, "remember the blue door")
    list(reply)
    collection = f"conversation-{reply.conversation_id}"
    assert len(store.get(collection)) == 2  # both turns were embedded as they arrived
    services.conversations.delete(alice, reply.conversation_id)
    assert store.get(collection) == {}


def test_recall_failure_degrades_to_the_recent_window(
    settings: Settings, database: Database, conversation_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenIndex:
        def observe(self, *_: object) -> None:
            raise RuntimeError("chroma is down")

        score = similar = observe

    deps = MemoryDeps(
        summaries=SummaryStore(database),
        summarizer=ExtractiveSummarizer(),
        recall_factory=lambda: BrokenIndex(),  # type: ignore[arg-type,return-value]
    )
    registry = StrategyRegistry(deps, default=settings.memory_strategy)
    history = chat_turns(50, needle_at=3)
    for name in ("hybrid", "vector_recall"):
        context = ask(registry.get(name), conversation_id, history, "dog?", 800)
        assert context.recalled == () and 50 in context.turn_ids
    assert "Recall is unavailable" in caplog.text


def test_a_slow_fold_holds_up_only_its_own_conversation(
    services: Services, alice: Principal, database: Database
) -> None:
    slow = services.conversations.create(alice, title="slow").id
    quick = services.conversations.create(alice, title="quick").id
    in_slow_fold, release_slow = threading.Event(), threading.Event()

    class BlocksOnTheSlowConversation:
        def summarize(
            self, conversation_id: int, previous: str | None, turns: Sequence[Turn], max_tokens: int
        ) -> SummaryDraft:
            del previous, max_tokens
            if conversation_id == slow:
                in_slow_fold.set()
                assert release_slow.wait(10), "the slow fold was never released"
            return SummaryDraft(f"{len(turns)} turns of {conversation_id}", "extractive")

    summarizer: Summarizer = BlocksOnTheSlowConversation()
    store = SummaryStore(database)
    rolling = RollingSummary(store, summarizer, fold_tokens=60, summary_tokens=100)
    history = chat_turns(10)  # about 20 tokens a turn: well past 60, so each call folds
    results: dict[int, Summary | None] = {}

    def fold(conversation_id: int) -> None:
        results[conversation_id] = rolling.maybe_fold(conversation_id, history)

    slow_thread = threading.Thread(target=fold, args=(slow,), daemon=True)
    quick_thread = threading.Thread(target=fold, args=(quick,), daemon=True)
    try:
        slow_thread.start()
        assert in_slow_fold.wait(5), "the slow fold never reached its summarizer"
        quick_thread.start()
        quick_thread.join(5)
        assert not quick_thread.is_alive(), "the quick fold waited for another conversation's"
        assert slow_thread.is_alive() and slow not in results  # still inside its summarizer
        saved = store.latest(quick)
        assert saved is not None and saved == results[quick]
        assert saved.text.endswith(f"of {quick}") and saved.first_turn_id == 1
        assert store.latest(slow) is None
    finally:
        release_slow.set()
        slow_thread.join(10)
    assert not slow_thread.is_alive()
    slow_saved = store.latest(slow)
    assert slow_saved is not None and slow_saved == results[slow]
    assert slow_saved.text.endswith(f"of {slow}")
